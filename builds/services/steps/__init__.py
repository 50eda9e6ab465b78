"""The steps of one build attempt, in the order builds/services/pipeline.py runs them: the
source rules (source_rules), the fetch of the commit (fetch), the Dockerfile to build
(dockerfile_choice), what buildkitd itself may fetch (egress), buildctl (buildkit), the image's
name (naming) and its tag in the registry (registry)."""
