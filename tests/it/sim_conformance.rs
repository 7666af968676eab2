//! Conformance of the dev cluster with the API server semantics the agent relies on,
//! driven through `kube::Client` over HTTPS.
