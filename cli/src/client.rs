//! Client commands against the edge: `agent …` and `run …`.

use std::io::Write;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::Value;

use crate::args::{AgentCommand, EdgeClientArgs, RunCommand};
use crate::state::State;

struct Edge {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Edge {
    fn new(a: &EdgeClientArgs) -> Result<Self> {
        let state = State::load(&a.home.path())?;
        let url = match (&a.edge_url, &state) {
            (Some(u), _) => u.clone(),
            (None, Some(s)) => s.edge_url.clone(),
            (None, None) => bail!("no edge: pass --edge-url, or start one with `agentos up`"),
        };
        let token = match (&a.token, &state) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => s.token()?,
            (None, None) => bail!("no token: pass --token (see `agentos token mint`)"),
        };
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            token,
            http: match &state {
                Some(s) => s.http()?,
                None => reqwest::Client::new(),
            },
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the edge at {}", self.url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let e = &body["error"];
            bail!(
                "{} {}: {}",
                status.as_u16(),
                e["code"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or("")
            );
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.url)).json(body))
            .await
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn agent(cmd: AgentCommand) -> Result<()> {
    match cmd {
        AgentCommand::Create { edge, file, json } => {
            let text = match (file, json) {
                (Some(f), _) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                (None, Some(j)) => j,
                (None, None) => bail!("give --file or --json"),
            };
            let body: Value =
                serde_json::from_str(&text).context("the agent definition is not valid JSON")?;
            print_json(&Edge::new(&edge)?.post("/v1/agents", &body).await?)
        }
        AgentCommand::List { edge } => {
            let list = Edge::new(&edge)?.get("/v1/agents").await?;
            println!("{:<24} {:<16} TOOLS", "ID", "MODEL");
            for a in list["data"].as_array().into_iter().flatten() {
                let tools: Vec<&str> = a["tools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<24} {:<16} {}",
                    a["id"].as_str().unwrap_or(""),
                    a["model"].as_str().unwrap_or(""),
                    tools.join(",")
                );
            }
            Ok(())
        }
        AgentCommand::Get { edge, id } => {
            print_json(&Edge::new(&edge)?.get(&format!("/v1/agents/{id}")).await?)
        }
    }
}

/// Returns the process exit code: 0 when a followed run completed.
pub async fn run(cmd: RunCommand) -> Result<i32> {
    match cmd {
        RunCommand::Create {
            edge,
            agent,
            input,
            follow,
        } => {
            let e = Edge::new(&edge)?;
            let run = e
                .post(
                    "/v1/runs",
                    &serde_json::json!({"agent_id": agent, "input": input}),
                )
                .await?;
            let id = run["id"]
                .as_str()
                .context("no run id in the answer")?
                .to_owned();
            if !follow {
                print_json(&run)?;
                return Ok(0);
            }
            println!("run {id}");
            follow_events(&e, &id).await
        }
        RunCommand::Get { edge, id } => {
            print_json(&Edge::new(&edge)?.get(&format!("/v1/runs/{id}")).await?).map(|()| 0)
        }
        RunCommand::List {
            edge,
            status,
            limit,
        } => {
            let mut path = format!("/v1/runs?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            let list = Edge::new(&edge)?.get(&path).await?;
            println!("{:<38} {:<16} {:<10} OUTPUT", "ID", "AGENT", "STATUS");
            for r in list["data"].as_array().into_iter().flatten() {
                println!(
                    "{:<38} {:<16} {:<10} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["agent_id"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["output"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        RunCommand::Trace { edge, id } => {
            let e = Edge::new(&edge)?;
            let record = e.get(&format!("/v1/runs/{id}")).await?;
            let terminal = matches!(
                record["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            let resp = e
                .http
                .get(format!("{}/v1/runs/{id}/events", e.url))
                .bearer_auth(&e.token)
                .send()
                .await?
                .error_for_status()?;
            // A run still going: what its journal holds so far (the stream stays open).
            let wait = std::time::Duration::from_secs(if terminal { 60 } else { 1 });
            let deadline = tokio::time::Instant::now() + wait;
            let mut body = resp.bytes_stream();
            let mut text = String::new();
            while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, body.next()).await {
                text.push_str(&String::from_utf8_lossy(&chunk?));
            }
            let events: Vec<agentos_bus::envelope::Event> = text
                .split("\n\n")
                .filter_map(|block| {
                    let data: String = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    serde_json::from_str(&data).ok()
                })
                .collect();
            println!(
                "run {id}  {}  trace {}",
                record["status"].as_str().unwrap_or("?"),
                record["trace_id"].as_str().unwrap_or("- (traces off)")
            );
            print!(
                "{}",
                crate::run_trace::render(&crate::run_trace::bars(&events), 40)
            );
            Ok(0)
        }
        RunCommand::Cancel { edge, id } => print_json(
            &Edge::new(&edge)?
                .post(&format!("/v1/runs/{id}/cancel"), &Value::Null)
                .await?,
        )
        .map(|()| 0),
    }
}

/// One line per event as it arrives over SSE.
fn describe(event: &str, data: &Value) -> String {
    let d = &data["data"];
    match event {
        "model.delta" => format!("{:?}", d["text"].as_str().unwrap_or("")),
        "tool.started" => format!("{} {}", d["name"].as_str().unwrap_or(""), d["arguments"]),
        "tool.completed" => format!("{} → {}", d["name"].as_str().unwrap_or(""), d["output"]),
        "tool.progress" => {
            let of = d["total"]
                .as_f64()
                .map(|t| format!("/{t}"))
                .unwrap_or_default();
            let msg = d["message"]
                .as_str()
                .map(|m| format!(" {m}"))
                .unwrap_or_default();
            format!(
                "{} {}{of}{msg}",
                d["name"].as_str().unwrap_or(""),
                d["progress"]
            )
        }
        "tool.failed" | "run.failed" => format!(
            "{}: {}",
            d["error"]["code"].as_str().unwrap_or(""),
            d["error"]["message"].as_str().unwrap_or("")
        ),
        "run.completed" => format!("{:?}", d["output"].as_str().unwrap_or("")),
        "step.started" => format!("step {}", d["step"]),
        "run.created" => format!("{:?}", d["input"].as_str().unwrap_or("")),
        "model.completed" => match d["message"]["tool_calls"].as_array() {
            Some(calls) if !calls.is_empty() => {
                let names: Vec<&str> = calls.iter().filter_map(|c| c["name"].as_str()).collect();
                format!("calls {}", names.join(", "))
            }
            _ => format!("{:?}", d["message"]["content"].as_str().unwrap_or("")),
        },
        _ => String::new(),
    }
}

async fn follow_events(e: &Edge, id: &str) -> Result<i32> {
    let resp = e
        .http
        .get(format!("{}/v1/runs/{id}/events", e.url))
        .bearer_auth(&e.token)
        .send()
        .await?
        .error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut outcome = 1;
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut seq, mut event, mut data) = ("", "", String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    seq = v.trim();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.is_empty() {
                continue;
            }
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            println!("  [{seq:>3}] {event:<20} {}", describe(event, &data));
            std::io::stdout().flush()?;
            if event == "run.completed" {
                outcome = 0;
            }
        }
    }
    Ok(outcome)
}
