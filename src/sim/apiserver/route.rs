//! Reading a request: which endpoint the path names, and which representation the Accept
//! header asks for.

use super::table::IncludeObject;

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// Answered without authentication.
    Public(Public),
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    Resources {
        group: String,
        version: String,
    },
    OpenApiV2,
    OpenApiV3Index,
    OpenApiV3 {
        group: String,
        version: String,
    },
    /// `/sim/faults`: the dev cluster's fault-injection admin endpoint.
    Faults,
    Resource(ResourcePath),
    NotFound,
}

/// The endpoints anyone may call, as on a cluster with anonymous health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Public {
    /// `/healthz`, `/readyz`, `/livez` and their sub-checks.
    Health,
    Version,
}

/// A path naming a resource, collection, or subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub(super) fn parse(path: &str) -> Route {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["healthz" | "readyz" | "livez", ..] => Route::Public(Public::Health),
        ["version"] => Route::Public(Public::Version),
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group(group.to_string()),
        ["api", version] => Route::Resources {
            group: String::new(),
            version: version.to_string(),
        },
        ["apis", group, version] => Route::Resources {
            group: group.to_string(),
            version: version.to_string(),
        },
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Index,
        ["openapi", "v3", "api", version] => Route::OpenApiV3 {
            group: String::new(),
            version: version.to_string(),
        },
        ["openapi", "v3", "apis", group, version] => Route::OpenApiV3 {
            group: group.to_string(),
            version: version.to_string(),
        },
        ["sim", "faults"] => Route::Faults,
        ["api", version, rest @ ..] => resource(String::new(), version, rest),
        ["apis", group, version, rest @ ..] => resource(group.to_string(), version, rest),
        _ => Route::NotFound,
    }
}

fn resource(group: String, version: &str, rest: &[&str]) -> Route {
    // `/namespaces/{ns}/{plural}...` is namespaced, unless it is the namespace object's own
    // subresource (`/namespaces/{ns}/status`, `/finalize`).
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..]
            if !(more.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            (Some(ns.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Route::NotFound,
    };
    Route::Resource(ResourcePath {
        group,
        version: version.to_string(),
        namespace,
        plural: plural.to_string(),
        name,
        subresource,
    })
}

impl ResourcePath {
    /// The path as the API server names it in "could not find the requested resource".
    pub fn describe(&self) -> String {
        let mut s = if self.group.is_empty() {
            format!("{} {}", self.version, self.plural)
        } else {
            format!("{}/{} {}", self.group, self.version, self.plural)
        };
        if let Some(sub) = &self.subresource {
            s.push('/');
            s.push_str(sub);
        }
        s
    }
}

/// The representation a get, list or watch returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    /// `application/json;as=Table;v=v1;g=meta.k8s.io` (kubectl get).
    Table(IncludeObject),
    /// `application/json;as=PartialObjectMetadata[List];v=v1;g=meta.k8s.io` (kube's metadata API).
    Metadata,
}

/// The first media range in `Accept` the server can produce; JSON when none is given.
pub(super) fn negotiate(accept: Option<&str>, include_object: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Json;
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if !matches!(media, "application/json" | "*/*" | "application/*") {
            continue;
        }
        let mut as_ = None;
        let mut group = None;
        for param in parts {
            match param.split_once('=') {
                Some(("as", v)) => as_ = Some(v.trim()),
                Some(("g", v)) => group = Some(v.trim()),
                _ => {}
            }
        }
        match (as_, group) {
            (None, _) => return Format::Json,
            (Some("Table"), Some("meta.k8s.io")) => {
                return Format::Table(IncludeObject::parse(include_object));
            }
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io")) => {
                return Format::Metadata;
            }
            // Aggregated discovery and anything else: try the next range.
            _ => continue,
        }
    }
    Format::Json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(
        group: &str,
        ns: Option<&str>,
        plural: &str,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> Route {
        Route::Resource(ResourcePath {
            group: group.into(),
            version: if group.is_empty() {
                "v1".into()
            } else {
                "v1alpha1".into()
            },
            namespace: ns.map(Into::into),
            plural: plural.into(),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
        })
    }

    #[test]
    fn paths_name_resources() {
        assert_eq!(
            parse("/api/v1/namespaces/default/pods"),
            res("", Some("default"), "pods", None, None)
        );
        assert_eq!(
            parse("/api/v1/namespaces/default/pods/p/status"),
            res("", Some("default"), "pods", Some("p"), Some("status"))
        );
        assert_eq!(parse("/api/v1/pods"), res("", None, "pods", None, None));
        assert_eq!(
            parse("/api/v1/namespaces/default"),
            res("", None, "namespaces", Some("default"), None)
        );
        assert_eq!(
            parse("/api/v1/namespaces/kube-system/status"),
            res("", None, "namespaces", Some("kube-system"), Some("status"))
        );
        assert_eq!(
            parse("/api/v1/namespaces"),
            res("", None, "namespaces", None, None)
        );
        assert_eq!(
            parse("/apis/apps.openyurt.io/v1alpha1/namespaces/ns/staticpods/sp"),
            res(
                "apps.openyurt.io",
                Some("ns"),
                "staticpods",
                Some("sp"),
                None
            )
        );
        assert_eq!(
            parse("/apis/apps.openyurt.io/v1alpha1"),
            Route::Resources {
                group: "apps.openyurt.io".into(),
                version: "v1alpha1".into()
            }
        );
        assert_eq!(
            parse("/apis/apps.openyurt.io"),
            Route::Group("apps.openyurt.io".into())
        );
        assert_eq!(parse("/readyz/ping"), Route::Public(Public::Health));
        assert_eq!(parse("/nope"), Route::NotFound);
    }

    #[test]
    fn accept_headers_pick_a_representation() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl_get), None),
            Format::Table(IncludeObject::Metadata)
        );
        assert_eq!(
            negotiate(Some(kubectl_get), Some("Object")),
            Format::Table(IncludeObject::Object)
        );
        let aggregated =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(Some(aggregated), None), Format::Json);
        assert_eq!(
            negotiate(
                Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
                None
            ),
            Format::Metadata
        );
        assert_eq!(negotiate(None, None), Format::Json);
    }
}
