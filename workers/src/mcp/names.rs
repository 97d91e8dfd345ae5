//! MCP tool names → AgentOS tool names. An MCP server names its tools freely (`getWeather`,
//! `files.read`, `résumé`); AgentOS tool names are dotted tokens of `[a-z0-9_-]` that map onto
//! subject levels. A bridged tool is `mcp.<server>.<token>`, where `<token>` is the MCP name
//! with ASCII letters lowercased, every other character outside `[a-z0-9_-]` (dots included)
//! replaced by `_`, a leading `_` or `-` prefixed with `t`, and cut to 63 characters. Two MCP
//! names that map onto one token are ambiguous: the first in name order keeps it, the others are
//! not bridged (and logged).

use std::collections::BTreeMap;

use agentos_bus::id::{McpServer, ToolName};

/// The longest token (see `agentos_bus::id`).
const MAX_TOKEN: usize = 63;

/// The token an MCP tool name maps onto.
pub fn token(mcp_name: &str) -> String {
    let mut out: String = mcp_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '_',
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 't');
    }
    out.truncate(MAX_TOKEN);
    out
}

/// `mcp.<server>.<token>`; `None` only for a name that maps onto nothing valid.
pub fn tool_name(server: &McpServer, mcp_name: &str) -> Option<ToolName> {
    ToolName::parse(format!("mcp.{server}.{}", token(mcp_name))).ok()
}

/// The bridged names of a server's tools, each with its MCP name; ambiguous and unmappable
/// names are returned apart.
pub fn map_all<'a>(
    server: &McpServer,
    mcp_names: impl IntoIterator<Item = &'a str>,
) -> (BTreeMap<ToolName, &'a str>, Vec<&'a str>) {
    let mut sorted: Vec<&str> = mcp_names.into_iter().collect();
    sorted.sort_unstable();
    let mut mapped = BTreeMap::new();
    let mut left_out = Vec::new();
    for name in sorted {
        match tool_name(server, name) {
            Some(t) if !mapped.contains_key(&t) => {
                mapped.insert(t, name);
            }
            _ => left_out.push(name),
        }
    }
    (mapped, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> McpServer {
        McpServer::parse("files").expect("server")
    }

    #[test]
    fn names_map_onto_one_token() {
        assert_eq!(token("read_file"), "read_file");
        assert_eq!(token("getWeather"), "getweather");
        assert_eq!(token("files.read"), "files_read");
        assert_eq!(token("résumé tool"), "r_sum__tool");
        assert_eq!(token("_private"), "t_private");
        assert_eq!(token(""), "t");
        assert_eq!(token(&"x".repeat(100)).len(), 63);
        assert_eq!(
            tool_name(&server(), "getWeather").map(String::from),
            Some("mcp.files.getweather".to_owned())
        );
    }

    #[test]
    fn ambiguous_names_keep_the_first_in_order() {
        let (mapped, left_out) = map_all(&server(), ["read.file", "read_file", "Read_File"]);
        assert_eq!(mapped.len(), 1);
        assert_eq!(mapped.values().next(), Some(&"Read_File"));
        assert_eq!(left_out, vec!["read.file", "read_file"]);
    }
}
