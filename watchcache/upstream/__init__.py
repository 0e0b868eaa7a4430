"""The async client to kube-apiserver, its credentials, retry policy and discovery documents."""
