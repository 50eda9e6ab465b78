"""The infrastructure the service builds with, set up beside it rather than run by it: the
build network and its egress policy (buildnet), the launcher of a local registry and buildkitd
(localservices), and the probes of both (probes). Standard library (and bcrypt) only, no
Django: it runs before the service, and buildnet.py also runs alone in the buildkitd container."""
