// Pins the KubeRay ray-operator module, whose config/ folder holds the CRDs and samples.
module watchcache.local/controlplane/kuberay

go 1.26

require github.com/ray-project/kuberay/ray-operator v1.5.0
