//! `agentos run trace <id>`: a run's timeline from its journal — the run, each step, each model
//! and tool call, with when it started and how long it took — as a waterfall in the terminal,
//! with the run's trace id to find its spans in a tracing backend.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use agentos_bus::envelope::{Event, EventData};

/// One row of the waterfall.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub depth: usize,
    pub label: String,
    pub start: Duration,
    /// `None` while it has not ended.
    pub end: Option<Duration>,
}

/// The rows of a run's journal, in order: the run, then per step the step, its model call and
/// its tool calls.
pub fn bars(events: &[Event]) -> Vec<Bar> {
    let Some(first) = events.first() else {
        return Vec::new();
    };
    let at = |e: &Event| Duration::try_from(e.ts - first.ts).unwrap_or_default();
    let mut rows = vec![Bar {
        depth: 0,
        label: "run".into(),
        start: Duration::ZERO,
        end: None,
    }];
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut step: Option<usize> = None;
    let push = |rows: &mut Vec<Bar>, depth, label: String, start| {
        rows.push(Bar {
            depth,
            label,
            start,
            end: None,
        });
        rows.len() - 1
    };
    for e in events {
        let t = at(e);
        match &e.data {
            EventData::StepStarted { step: n } => {
                if let Some(i) = step.take() {
                    rows[i].end = Some(t);
                }
                step = Some(push(&mut rows, 1, format!("step {n}"), t));
                let m = push(&mut rows, 2, "model".into(), t);
                open.insert(format!("model:{n}"), m);
            }
            EventData::ModelCompleted { step: n, .. } => {
                if let Some(i) = open.remove(&format!("model:{n}")) {
                    rows[i].end = Some(t);
                }
            }
            EventData::ToolStarted { call_id, name, .. } => {
                let i = push(&mut rows, 2, format!("tool {name}"), t);
                open.insert(format!("tool:{call_id}"), i);
            }
            EventData::ToolCompleted { call_id, .. } | EventData::ToolFailed { call_id, .. } => {
                if let Some(i) = open.remove(&format!("tool:{call_id}")) {
                    rows[i].end = Some(t);
                }
            }
            data if data.is_terminal() => {
                for row in rows.iter_mut().filter(|r| r.end.is_none()) {
                    row.end = Some(t);
                }
                rows[0].label = format!("run ({})", e.type_name().trim_start_matches("run."));
            }
            _ => {}
        }
    }
    rows
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The waterfall, `width` characters of bar per row.
pub fn render(rows: &[Bar], width: usize) -> String {
    let total = rows
        .iter()
        .flat_map(|r| [Some(r.start), r.end])
        .flatten()
        .max()
        .unwrap_or_default()
        .max(Duration::from_micros(1));
    let col =
        |d: Duration| ((d.as_secs_f64() / total.as_secs_f64()) * width as f64).round() as usize;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>9}  0{:>w$}",
        "",
        "start",
        format!("{:.1} ms", ms(total)),
        w = width
    );
    for r in rows {
        let (from, to) = (col(r.start), col(r.end.unwrap_or(total)));
        let bar = format!(
            "{}{}",
            " ".repeat(from),
            (if r.end.is_some() { "█" } else { "░" }).repeat((to - from.min(to)).max(1))
        );
        let took = r.end.map_or_else(
            || "running".to_owned(),
            |e| format!("{:.1} ms", ms(e.saturating_sub(r.start))),
        );
        let label = format!("{}{}", "  ".repeat(r.depth), r.label);
        let _ = writeln!(
            out,
            "{label:<24} {:>7.1}ms |{bar:<width$}| {took}",
            ms(r.start)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentos_bus::envelope::{ChatMessage, Role, Usage};
    use agentos_bus::id::{CallId, RunId, Tenant};

    fn ev(ms: i64, data: EventData) -> Event {
        Event {
            seq: 0,
            run_id: RunId::new(),
            tenant: Tenant::parse("t").expect("tenant"),
            ts: time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms),
            trace_id: None,
            data,
        }
    }

    #[test]
    fn a_run_with_one_tool_call_is_run_step_model_tool_step_model() {
        let call = CallId::parse("c1").expect("call");
        let name: agentos_bus::id::ToolName = "echo".parse().expect("tool");
        let completed = |step| EventData::ModelCompleted {
            step,
            message: ChatMessage::text(Role::Assistant, "x"),
            usage: Usage::default(),
        };
        let events = [
            ev(0, EventData::StepStarted { step: 1 }),
            ev(3, completed(1)),
            ev(
                4,
                EventData::ToolStarted {
                    step: 1,
                    call_id: call.clone(),
                    name: name.clone(),
                    arguments: serde_json::Value::Null,
                },
            ),
            ev(
                6,
                EventData::ToolCompleted {
                    step: 1,
                    call_id: call,
                    name,
                    output: serde_json::Value::Null,
                },
            ),
            ev(7, EventData::StepStarted { step: 2 }),
            ev(9, completed(2)),
            ev(
                10,
                EventData::RunCompleted {
                    output: "ok".into(),
                    usage: Usage::default(),
                },
            ),
        ];
        let rows = bars(&events);
        let got: Vec<(&str, u128, Option<u128>)> = rows
            .iter()
            .map(|r| {
                (
                    r.label.as_str(),
                    r.start.as_millis(),
                    r.end.map(|e| e.as_millis()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("run (completed)", 0, Some(10)),
                ("step 1", 0, Some(7)),
                ("model", 0, Some(3)),
                ("tool echo", 4, Some(6)),
                ("step 2", 7, Some(10)),
                ("model", 7, Some(9)),
            ]
        );
        let text = render(&rows, 20);
        assert!(text.contains("tool echo"), "{text}");
        assert_eq!(text.lines().count(), 7, "{text}");
    }
}
