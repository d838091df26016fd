"""kiln.registry: the OCI distribution client.

Auth (anonymous, basic, bearer token), pull, push, cross-repository mount,
HEAD-before-upload, retries and parallel transfers, one module each::

    from kiln.registry.client import RegistryClient
    from kiln.registry.dockerconfig import DockerConfig
    from kiln.registry.reference import Reference

    with RegistryClient(DockerConfig()) as client:
        image = client.resolve_image(Reference.parse("busybox"), host_platform())

The package itself imports nothing, so that a module needing only references or the
Docker config does not load the HTTP client.
"""
