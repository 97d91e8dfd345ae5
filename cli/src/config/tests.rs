//! The config tree's tests: layering, validation, every section's keys.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use clap::Parser;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

use super::*;

const EXAMPLE: &str = include_str!("../../../agentos.example.toml");

#[test]
fn the_example_file_parses_and_sets_every_section() {
    let c = parse(EXAMPLE).expect("example parses");
    assert_eq!(c.orchestrator.ack_wait, Some(Duration::from_secs(2)));
    assert_eq!(c.up.orchestrators, Some(1));
    assert_eq!(c.tenants.admission, Some(agentos_bus::Admission::Implicit));
    let c = parse("[tenants]\nadmission = \"registered\"\n").expect("registered");
    assert_eq!(
        c.tenants.admission,
        Some(agentos_bus::Admission::Registered)
    );
    assert!(parse("[tenants]\nadmission = \"closed\"\n").is_err());
}

#[test]
fn mcp_servers_are_a_command_or_a_url() {
    let c = parse(
        "[mcp.servers.files]\ncommand = \"python3\"\nargs = [\"s.py\"]\nenv = { A = \"1\" }\n\
         [mcp.servers.web]\nurl = \"http://127.0.0.1:9/mcp\"\n",
    )
    .expect("parses");
    let opts = mcp_bridge(&c.mcp).expect("valid");
    assert_eq!(opts.servers.len(), 2);
    assert_eq!(opts.call_timeout, Duration::from_secs(60));
    for bad in [
        "[mcp.servers.x]\n",
        "[mcp.servers.x]\ncommand = \"a\"\nurl = \"http://h/\"\n",
        "[mcp.servers.x]\nurl = \"ftp://h/\"\n",
        "[mcp.servers.x]\nurl = \"http://h/\"\nargs = []\n",
        "[mcp.servers.Bad]\ncommand = \"a\"\n",
    ] {
        let c = parse(bad).expect("parses");
        assert!(mcp_bridge(&c.mcp).is_err(), "{bad}");
    }
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let err = parse("[edge]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("lisen"), "{err}");
    let err = parse("[orchestrator]\nack-wait = \"5 days\"\n")
        .expect_err("bad duration")
        .to_string();
    assert!(err.contains("line 2") && err.contains("duration"), "{err}");
}

/// Records the dotted path of every key a type's `Deserialize` asks for: each struct's
/// fields, walked into; an `Option` is a key (answered "absent"); a map one entry `*`.
#[derive(Clone, Default)]
struct Keys {
    path: String,
    out: Rc<RefCell<BTreeSet<String>>>,
}

impl Keys {
    fn leaf(&self) {
        self.out.borrow_mut().insert(self.path.clone());
    }

    fn of<'de, T: Deserialize<'de>>() -> BTreeSet<String> {
        let keys = Keys::default();
        T::deserialize(keys.clone()).expect("walked");
        keys.out.take()
    }
}

impl<'de> Deserializer<'de> for Keys {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.leaf();
        v.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.leaf();
        v.visit_none()
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_map(Fields {
            keys: self,
            fields: fields.iter(),
            next: String::new(),
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_map(Fields {
            keys: self,
            fields: ["*"].iter(),
            next: String::new(),
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct newtype_struct seq tuple tuple_struct enum identifier
        ignored_any
    }
}

struct Fields {
    keys: Keys,
    fields: std::slice::Iter<'static, &'static str>,
    next: String,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.next = match self.keys.path.as_str() {
            "" => (*field).to_owned(),
            p => format!("{p}.{field}"),
        };
        seed.deserialize((*field).into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(Keys {
            path: self.next.clone(),
            out: self.keys.out.clone(),
        })
    }
}

/// Every key of the tree, from its types: `nats.url`, …, `model.routes.*.backend`, ….
fn tree_keys() -> BTreeSet<String> {
    let mut keys = Keys::of::<Config>();
    assert!(keys.remove("model.routes"), "{keys:?}");
    keys.extend(
        Keys::of::<RouteConfig>()
            .into_iter()
            .map(|k| format!("model.routes.*.{k}")),
    );
    assert!(keys.remove("mcp.servers"), "{keys:?}");
    keys.extend(
        Keys::of::<McpServerConfig>()
            .into_iter()
            .map(|k| format!("mcp.servers.*.{k}")),
    );
    assert!(keys.remove("quotas.prices"), "{keys:?}");
    // A price's two numbers (the walker answers every leaf with a string).
    keys.extend(["input", "output"].map(|k| format!("quotas.prices.*.{k}")));
    assert!(keys.remove("memory.namespaces"), "{keys:?}");
    keys.extend(
        Keys::of::<NamespaceConfig>()
            .into_iter()
            .map(|k| format!("memory.namespaces.*.{k}")),
    );
    keys
}

/// The example with its commented-out keys and tables switched on.
fn uncommented(example: &str) -> String {
    let key = |s: &str| {
        s.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
    };
    let table = |s: &str| {
        s.starts_with('[')
            && s.find(']').is_some_and(|i| {
                let rest = s[i + 1..].trim_start_matches(']').trim();
                rest.is_empty() || rest.starts_with('#')
            })
    };
    example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if key(rest) || table(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The keys a TOML document sets, as dotted paths; a route's name is `*`.
fn documented(t: &toml::Table, prefix: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, v) in t {
        let k = if prefix == "model.routes"
            || prefix == "mcp.servers"
            || prefix == "memory.namespaces"
            || prefix == "quotas.prices"
        {
            "*"
        } else {
            k
        };
        let path = if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !known.contains(&path) => {
                out.extend(documented(t, &path, known));
            }
            _ => {
                out.insert(path);
            }
        }
    }
    out
}

#[test]
fn the_example_documents_every_key_and_every_documented_key_parses() {
    let known = tree_keys();
    assert!(known.contains("nats.url") && known.contains("model.routes.*.backend"));
    assert!(
        !known.contains("edge.jwt-secret"),
        "secrets stay out of the file"
    );
    let all = uncommented(EXAMPLE);
    parse(&all).unwrap_or_else(|e| panic!("the example with every key on: {e}"));
    let table: toml::Table = toml::from_str(&all).expect("toml");
    let shown = documented(&table, "", &known);
    let missing: Vec<_> = known.difference(&shown).collect();
    assert!(missing.is_empty(), "agentos.example.toml lacks {missing:?}");
}

#[test]
fn the_example_shows_the_defaults() {
    let c = parse(EXAMPLE).expect("example parses");
    let show = |name: &str, set: String, default: String| {
        assert_eq!(set, default, "[{name}] in agentos.example.toml");
    };
    // Each section as the example sets it, over the defaults, is the defaults; routes and
    // other keys without a default are examples.
    let mut model = c.model.clone();
    model.routes = None;
    show(
        "nats",
        format!("{:?}", c.nats.clone().or(Nats::defaults())),
        format!("{:?}", Nats::defaults()),
    );
    show(
        "edge",
        format!("{:?}", c.edge.clone().or(Edge::defaults())),
        format!("{:?}", Edge::defaults()),
    );
    show(
        "tenants",
        format!("{:?}", c.tenants.clone().or(Tenants::defaults())),
        format!("{:?}", Tenants::defaults()),
    );
    show(
        "federation",
        format!("{:?}", c.federation.clone().or(Federation::defaults())),
        format!("{:?}", Federation::defaults()),
    );
    show(
        "security",
        format!("{:?}", c.security.clone().or(Security::defaults())),
        format!("{:?}", Security::defaults()),
    );
    show(
        "orchestrator",
        format!("{:?}", c.orchestrator.clone().or(Orchestrator::defaults())),
        format!("{:?}", Orchestrator::defaults()),
    );
    show(
        "model",
        format!("{:?}", model.or(Model::defaults())),
        format!("{:?}", Model::defaults()),
    );
    let mut quotas = c.quotas.clone();
    quotas.prices = None;
    show(
        "quotas",
        format!("{:?}", quotas.or(Quotas::defaults())),
        format!("{:?}", Quotas::defaults()),
    );
    show(
        "tool",
        format!("{:?}", c.tool.clone().or(Tool::defaults())),
        format!("{:?}", Tool::defaults()),
    );
    let mut memory = c.memory.clone();
    memory.namespaces = None;
    show(
        "memory",
        format!("{:?}", memory.or(Memory::defaults())),
        format!("{:?}", Memory::defaults()),
    );
    let mut mcp = c.mcp.clone();
    mcp.servers = None;
    show(
        "mcp",
        format!("{:?}", mcp.or(Mcp::defaults())),
        format!("{:?}", Mcp::defaults()),
    );
    show(
        "metrics",
        format!("{:?}", c.metrics.clone().or(Metrics::defaults())),
        format!("{:?}", Metrics::defaults()),
    );
    show(
        "up",
        format!("{:?}", c.up.clone().or(Up::defaults())),
        format!("{:?}", Up::defaults()),
    );
    show(
        "auth-callout",
        format!("{:?}", c.auth_callout.clone().or(AuthCallout::defaults())),
        format!("{:?}", AuthCallout::defaults()),
    );
}

fn cli(args: &[&str], file: &str) -> Cli {
    let mut cli = Cli::try_parse_from(args).expect("arguments");
    layer(&mut cli, parse(file).expect("file"));
    cli
}

#[test]
fn flags_win_over_the_file_and_the_file_over_the_defaults() {
    let file =
        "[orchestrator]\nack-wait = \"10s\"\nmodel-timeout = \"7s\"\n[nats]\nuser = \"file\"\n";
    let c = cli(
        &[
            "agentos",
            "worker",
            "orchestrator",
            "--ack-wait",
            "5s",
            "--nats-user",
            "flag",
        ],
        file,
    );
    let Command::Worker {
        kind: WorkerKind::Orchestrator(a),
    } = c.command
    else {
        panic!("orchestrator");
    };
    assert_eq!(a.orchestrator.ack_wait(), Duration::from_secs(5));
    assert_eq!(a.orchestrator.model_timeout(), Duration::from_secs(7));
    assert_eq!(a.orchestrator.tool_timeout(), Duration::from_secs(60));
    assert_eq!(a.nats.user().as_deref(), Some("flag"));
    assert_eq!(a.tenants.admission(), Admission::Implicit);

    let c = cli(
        &["agentos", "worker", "tool"],
        "[tool]\nhttp-allow = [\"a\", \"b:81\"]\n",
    );
    let Command::Worker {
        kind: WorkerKind::Tool(a),
    } = c.command
    else {
        panic!("tool");
    };
    assert_eq!(a.tool.http_allow(), ["a", "b:81"]);
    assert_eq!(a.tool.concurrency(), 256);
}

#[test]
fn edge_tls_settings_come_from_the_file_and_flags_and_must_be_complete() {
    let dir = tempfile::tempdir().expect("temp");
    let key = dir.path().join("key.pem");
    crate::secret::write(&key, b"k").expect("key");
    let file = format!(
        "[edge]\ntls-cert = \"/c.pem\"\ntls-key = {key:?}\ntls-client-ca = \"/ca.pem\"\n\
         tls-principals = [{{ identity = \"ci\", tenant = \"acme\", subject = \"ci\" }}]\n"
    );
    let c = cli(
        &[
            "agentos",
            "edge",
            "--tls-client-auth",
            "optional",
            "--tls-principal",
            "spiffe://acme/bot=acme:bot:member,tenant-admin",
        ],
        &file,
    );
    let Command::Edge(a) = c.command else {
        panic!("edge");
    };
    let tls = a.edge.tls().expect("valid").expect("on");
    assert_eq!(tls.client_auth, agentos_edge::ClientAuth::Optional);
    assert_eq!(tls.principals.len(), 1, "the flag wins over the file");
    assert_eq!(tls.principals[0].roles, ["member", "tenant-admin"]);
    let c = cli(&["agentos", "edge"], &file);
    let Command::Edge(a) = c.command else {
        panic!("edge");
    };
    let tls = a.edge.tls().expect("valid").expect("on");
    assert_eq!(tls.client_auth, agentos_edge::ClientAuth::Require);
    assert_eq!(tls.principals[0].roles, ["member"], "the default role");
    for bad in [
        "[edge]\ntls-cert = \"/c.pem\"\n".to_owned(),
        "[edge]\ntls-client-ca = \"/ca.pem\"\n".to_owned(),
        format!(
            "[edge]\ntls-cert = \"/c.pem\"\ntls-key = {key:?}\ntls-principals = [{{ identity = \"x\", tenant = \"a\", subject = \"b\" }}]\n"
        ),
    ] {
        let c = cli(&["agentos", "edge"], &bad);
        let Command::Edge(a) = c.command else {
            panic!("edge");
        };
        assert!(a.edge.tls().is_err(), "{bad}");
    }
}

#[test]
fn the_up_home_is_every_commands_home() {
    for args in [
        &["agentos", "status"][..],
        &["agentos", "down"],
        &["agentos", "run", "list"],
        &["agentos", "validate"],
    ] {
        let mut c = cli(args, "[up]\nhome = \"/srv/agentos\"\n");
        let home = c.command.home_mut().map(|h| h.path());
        assert_eq!(home, Some(PathBuf::from("/srv/agentos")), "{args:?}");
        let mut c = cli(
            &[args, &["--home", "/x"]].concat(),
            "[up]\nhome = \"/srv\"\n",
        );
        assert_eq!(c.command.home_mut().map(|h| h.path()), Some("/x".into()));
    }
    let mut c = cli(&["agentos", "status"], "");
    assert_eq!(c.command.home_mut().map(|h| h.path()), Some(default_home()));
}
