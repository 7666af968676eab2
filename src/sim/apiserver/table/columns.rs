//! The column definitions of each type's Table, as the real API server's printers declare
//! them (a CRD's `additionalPrinterColumns` for custom resources).

use crate::sim::resource::ResourceType;

/// One entry of a Table's `columnDefinitions`.
pub(super) struct Column {
    pub(super) name: String,
    pub(super) type_: &'static str,
    pub(super) format: &'static str,
    pub(super) description: String,
    pub(super) priority: i64,
}

fn col(name: &str, type_: &'static str, priority: i64, description: &str) -> Column {
    Column {
        name: name.to_string(),
        type_,
        format: "",
        description: description.to_string(),
        priority,
    }
}

fn name_col() -> Column {
    Column {
        format: "name",
        ..col(
            "Name",
            "string",
            0,
            "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically.",
        )
    }
}

const AGE: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

pub(super) fn columns(rt: &ResourceType) -> Vec<Column> {
    if !rt.builtin {
        let mut cols = vec![name_col()];
        if rt.printer_columns.is_empty() {
            // A CRD without printer columns gets an Age column, as from the API server.
            cols.push(col("Age", "date", 0, AGE));
        }
        cols.extend(rt.printer_columns.iter().map(|c| Column {
            name: c.name.clone(),
            type_: match c.type_.as_str() {
                "integer" => "integer",
                "number" => "number",
                "boolean" => "boolean",
                "date" => "date",
                _ => "string",
            },
            format: "",
            description: c.description.clone(),
            priority: c.priority,
        }));
        return cols;
    }
    let s = "string";
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => vec![
            name_col(),
            col(
                "Ready",
                s,
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                s,
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                s,
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            col("Age", s, 0, AGE),
            col(
                "IP",
                s,
                1,
                "podIP address allocated to the pod. Routable at least within the cluster.",
            ),
            col(
                "Node",
                s,
                1,
                "NodeName indicates in which node this pod is scheduled.",
            ),
            col(
                "Nominated Node",
                s,
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                s,
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("", "Node") => vec![
            name_col(),
            col("Status", s, 0, "The status of the node"),
            col("Roles", s, 0, "The roles of the node"),
            col("Age", s, 0, AGE),
            col("Version", s, 0, "Kubelet Version reported by the node."),
            col(
                "Internal-IP",
                s,
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "External-IP",
                s,
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "OS-Image",
                s,
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                s,
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                s,
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name_col(),
            col(
                "Holder",
                s,
                0,
                "holderIdentity contains the identity of the holder of a current lease.",
            ),
            col("Age", s, 0, AGE),
        ],
        ("" | "events.k8s.io", "Event") => vec![
            col(
                "Last Seen",
                s,
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                s,
                0,
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            col(
                "Reason",
                s,
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", s, 0, "The object that this event is about."),
            col(
                "Subobject",
                s,
                1,
                "The field of the object the event is about.",
            ),
            col("Source", s, 1, "The component reporting this event."),
            col(
                "Message",
                s,
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                s,
                1,
                "The time at which the event was first recorded.",
            ),
            col(
                "Count",
                s,
                1,
                "The number of times this event has occurred.",
            ),
            Column {
                priority: 1,
                ..name_col()
            },
        ],
        ("", "Namespace") => vec![
            name_col(),
            col("Status", s, 0, "The status of the namespace"),
            col("Age", s, 0, AGE),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name_col(), col("Created At", "date", 0, AGE)]
        }
        _ => vec![name_col(), col("Age", s, 0, AGE)],
    }
}
