//! kubectl's pod printer.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::cells::{or_none, str_at};
use super::duration::human_duration;

/// kubectl's pod printer: READY, STATUS (the same reason kubectl derives), RESTARTS, AGE, and
/// the wide columns.
pub(super) fn pod_cells(pod: &Value, name: Value, age_cell: Value, now: Timestamp) -> Vec<Value> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut reason = str_at(pod, "/status/phase").to_string();
    if let Some(r) = pod
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        reason = r.to_string();
    }
    let mut restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut note_restart = |status: &Value, restarts: &mut i64| {
        *restarts += status["restartCount"].as_i64().unwrap_or(0);
        if let Some(t) = status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            && let Ok(t) = t.parse::<Timestamp>()
            && last_restart.is_none_or(|l| t > l)
        {
            last_restart = Some(t);
        }
    };
    let exit_reason = |term: &Value| -> String {
        match term["reason"].as_str().filter(|r| !r.is_empty()) {
            Some(r) => r.to_string(),
            None => match term["signal"].as_i64().filter(|s| *s != 0) {
                Some(sig) => format!("Signal:{sig}"),
                None => format!("ExitCode:{}", term["exitCode"].as_i64().unwrap_or(0)),
            },
        }
    };

    let init_statuses = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, status) in init_statuses.iter().enumerate() {
        note_restart(status, &mut restarts);
        let term = status.pointer("/state/terminated");
        if term.is_some_and(|t| t["exitCode"].as_i64() == Some(0)) {
            continue;
        }
        reason = if let Some(term) = term {
            format!("Init:{}", exit_reason(term))
        } else if let Some(w) = status
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            format!("Init:{w}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        initializing = true;
        break;
    }

    let mut ready = 0;
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for status in statuses.iter().rev() {
            note_restart(status, &mut restarts);
            if let Some(w) = status
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                reason = w.to_string();
            } else if let Some(term) = status.pointer("/state/terminated") {
                reason = exit_reason(term);
            } else if status["ready"] == true && status.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if str_at(pod, "/status/reason") == "NodeLost" {
            "Unknown"
        } else {
            "Terminating"
        }
        .to_string();
    }
    let restarts_cell = match last_restart {
        Some(t) => json!(format!(
            "{restarts} ({} ago)",
            human_duration(now.duration_since(t).as_secs())
        )),
        None => json!(restarts),
    };
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let gates_cell = if gates.is_empty() {
        json!("<none>")
    } else {
        let conditions = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let true_gates = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
            .count();
        json!(format!("{true_gates}/{}", gates.len()))
    };
    vec![
        name,
        json!(format!("{ready}/{containers}")),
        json!(reason),
        restarts_cell,
        age_cell,
        or_none(str_at(pod, "/status/podIP")),
        or_none(str_at(pod, "/spec/nodeName")),
        or_none(str_at(pod, "/status/nominatedNodeName")),
        gates_cell,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_cells() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [
                {"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        let cells = pod_cells(&pod, json!("p"), json!("1m"), Timestamp::now());
        assert_eq!(cells[1..4], [json!("1/1"), json!("Running"), json!(0)]);
        assert_eq!(cells[5..7], [json!("10.0.0.1"), json!("n1")]);
    }
}
