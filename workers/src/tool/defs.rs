//! The tool definitions a model is shown: a built-in's description and argument schema; other
//! tools (served by other processes) by name only.

use agentos_bus::envelope::ToolDef;
use agentos_bus::id::ToolName;
use serde_json::Value;

use super::Builtin;

/// The model-facing definitions of `names`, in order.
pub fn tool_defs(names: &[ToolName]) -> Vec<ToolDef> {
    names
        .iter()
        .map(|name| match Builtin::named(name.as_str()) {
            Some(b) => ToolDef {
                name: name.to_string(),
                description: b.description().to_owned(),
                parameters: b.parameters(),
            },
            None => match super::MemoryTool::named(name.as_str()) {
                Some(m) => ToolDef {
                    name: name.to_string(),
                    description: m.description().to_owned(),
                    parameters: m.parameters(),
                },
                None => ToolDef {
                    name: name.to_string(),
                    description: String::new(),
                    parameters: Value::Null,
                },
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_come_with_a_schema() {
        let names: Vec<ToolName> = ["math.eval", "py.upper"]
            .iter()
            .map(|n| ToolName::parse(*n).expect("name"))
            .collect();
        let defs = tool_defs(&names);
        assert_eq!(defs[0].parameters["required"][0], "expr");
        assert!(!defs[0].description.is_empty());
        assert_eq!(
            (defs[1].name.as_str(), &defs[1].parameters),
            ("py.upper", &Value::Null)
        );
    }
}
