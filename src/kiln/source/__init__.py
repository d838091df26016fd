"""Where a build's inputs come from: the build context, base images, URLs (as BuildKit's
``source/``)."""
