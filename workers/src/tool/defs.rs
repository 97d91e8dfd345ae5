//! Tool definitions as the orchestrator and the tool worker use them: a [`ToolSpec`] with its
//! argument schema compiled once ([`Declared`]), the built-ins' declarations from code, and the
//! [`Catalog`] that adds the tools other workers declare (service discovery, cached).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use agentos_bus::envelope::{ErrorBody, ToolDef, ToolSpec};
use agentos_bus::id::ToolName;
use agentos_bus::{TOOL_CACHE_TTL, ToolDirectory};
use serde_json::{Value, json};

use super::Builtin;

/// At most this many validation errors are named in an `invalid_arguments` message.
const MAX_REPORTED_ERRORS: usize = 3;

/// A declared tool, its argument schema compiled.
pub struct Declared {
    spec: ToolSpec,
    /// `None` when the declared schema is not a valid JSON Schema: the tool is then shown to
    /// models as taking any object, and its arguments are not checked.
    validator: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for Declared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declared")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Declared {
    pub fn new(spec: ToolSpec) -> Self {
        let validator = match jsonschema::validator_for(&spec.parameters) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(tool = %spec.name, error = %e, "the tool declares an invalid argument schema; its arguments are not checked");
                None
            }
        };
        Self { spec, validator }
    }

    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    /// What the model is shown.
    pub fn def(&self) -> ToolDef {
        ToolDef {
            name: self.spec.name.to_string(),
            description: self.spec.description.clone(),
            parameters: if self.validator.is_some() {
                self.spec.parameters.clone()
            } else {
                any_object()
            },
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.spec.timeout_ms.max(1))
    }

    /// Checks `arguments` against the schema: `invalid_arguments` with the validator's words
    /// (where in the arguments, and what is wrong) when they do not fit.
    pub fn check(&self, arguments: &Value) -> Result<(), ErrorBody> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let errors: Vec<String> = validator
            .iter_errors(arguments)
            .take(MAX_REPORTED_ERRORS)
            .map(|e| format!("arguments{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        Err(ErrorBody::new(
            "invalid_arguments",
            format!(
                "the arguments do not match the schema of {}: {}",
                self.spec.name,
                errors.join("; ")
            ),
        ))
    }
}

/// What a model is shown for a tool nobody declares right now: its name, taking any object.
pub fn undeclared(name: &ToolName) -> ToolDef {
    ToolDef {
        name: name.to_string(),
        description: String::new(),
        parameters: any_object(),
    }
}

fn any_object() -> Value {
    json!({"type": "object"})
}

static BUILTINS: LazyLock<HashMap<&'static str, Arc<Declared>>> = LazyLock::new(|| {
    let builtins = Builtin::ALL.into_iter().map(|b| (b.name(), b.spec()));
    let memory = super::MemoryTool::ALL
        .into_iter()
        .map(|m| (m.name(), m.spec()));
    builtins
        .chain(memory)
        .filter_map(|(name, spec)| Some((name, Arc::new(Declared::new(spec?)))))
        .collect()
});

/// The built-in called `name`, as declared in code.
pub fn builtin(name: &str) -> Option<Arc<Declared>> {
    BUILTINS.get(name).cloned()
}

/// Every tool's declaration: built-ins from code, the others from the tools running workers
/// declare ([`ToolDirectory`], at most [`TOOL_CACHE_TTL`] old). An agent whose tools are all
/// built-ins never waits for discovery.
#[derive(Clone)]
pub struct Catalog {
    directory: ToolDirectory,
    /// Compiled declarations of discovered tools, recompiled when a declaration changes.
    compiled: Arc<Mutex<HashMap<ToolName, Arc<Declared>>>>,
}

impl Catalog {
    pub fn new(directory: ToolDirectory) -> Self {
        Self {
            directory,
            compiled: Arc::default(),
        }
    }

    /// The declarations of `names`, in order; `None` for a tool nobody declares right now.
    pub async fn lookup(
        &self,
        names: &[ToolName],
    ) -> agentos_bus::Result<Vec<Option<Arc<Declared>>>> {
        let mut out: Vec<Option<Arc<Declared>>> =
            names.iter().map(|n| builtin(n.as_str())).collect();
        if out.iter().all(Option::is_some) {
            return Ok(out);
        }
        let declared = self.directory.get(TOOL_CACHE_TTL).await?;
        let mut compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        for (slot, name) in out.iter_mut().zip(names) {
            if slot.is_some() {
                continue;
            }
            let Some(spec) = declared.get(name) else {
                continue;
            };
            let tool = match compiled.get(name) {
                Some(t) if t.spec() == spec => t.clone(),
                _ => {
                    let t = Arc::new(Declared::new(spec.clone()));
                    compiled.insert(name.clone(), t.clone());
                    t
                }
            };
            *slot = Some(tool);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_come_with_a_schema_that_checks_arguments() {
        let math = builtin("math.eval").expect("math.eval");
        let def = math.def();
        assert_eq!(def.parameters["required"][0], "expr");
        assert!(!def.description.is_empty());
        assert!(math.check(&json!({"expr": "6*7"})).is_ok());
        let err = math.check(&json!({"expr": 42})).expect_err("wrong type");
        assert_eq!(err.code, "invalid_arguments");
        assert!(err.message.contains("arguments/expr"), "{}", err.message);
        assert!(err.message.contains("string"), "{}", err.message);
        let err = math.check(&json!({})).expect_err("missing");
        assert!(err.message.contains("expr"), "{}", err.message);
        // A model's arguments that did not parse as JSON arrive as a string.
        assert!(math.check(&json!("6*7")).is_err());
    }

    #[test]
    fn an_undeclared_tool_is_shown_by_name_taking_any_object() {
        let name = ToolName::parse("py.upper").expect("name");
        let def = undeclared(&name);
        assert_eq!(
            (def.name.as_str(), &def.parameters),
            ("py.upper", &json!({"type": "object"}))
        );
    }

    #[test]
    fn an_invalid_declared_schema_is_not_shown_and_checks_nothing() {
        let tool = Declared::new(ToolSpec {
            name: ToolName::parse("odd").expect("name"),
            description: "odd".into(),
            parameters: json!({"type": 12}),
            idempotent: false,
            timeout_ms: 10,
        });
        assert_eq!(tool.def().parameters, json!({"type": "object"}));
        assert!(tool.check(&json!({"anything": 1})).is_ok());
    }
}
