"""Step results: the local store, the record and hit types the solver uses, and the remote
cache backends (``remote/``, one module per ``type=``)."""
