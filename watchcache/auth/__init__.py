"""Who is asking (authentication) and what they may do (authorization), decided as
kube-apiserver decides."""
