//! The tools as Letta tools of our own making: Python that runs in Letta's tool sandbox and calls
//! our HTTP API (`super::http`) for the agent that runs it. Letta puts the agent's id in the
//! sandbox's `LETTA_AGENT_ID` and the agent's secrets in its environment, so the agent's token
//! (`LETTA_MATRIX_TOKEN`) travels with the agent and never through the model.
//!
//! Same names, arguments, descriptions and answers as the MCP tools: both come from one catalog.

use serde_json::{Map, Value, json};

use super::{TOKEN_SECRET, ToolName};

/// Marks the tools we made, so that nothing else is ever touched or taken for ours.
pub const TOOL_TAG: &str = "letta-matrix";

/// One tool as Letta's `PUT /v1/tools/` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxTool {
    pub name: &'static str,
    pub description: &'static str,
    pub source_code: String,
    /// `{name, description, parameters}`, given so that Letta need not derive it from the source.
    pub json_schema: Value,
}

/// The tools for a letta-matrix that Letta's sandbox reaches at `base_url`.
pub fn tools(base_url: &str) -> Vec<SandboxTool> {
    ToolName::ALL
        .into_iter()
        .map(|tool| sandbox_tool(tool, base_url))
        .collect()
}

fn sandbox_tool(tool: ToolName, base_url: &str) -> SandboxTool {
    let parameters = model_schema(&tool.input_schema());
    let params = Param::all(&parameters);
    SandboxTool {
        name: tool.as_str(),
        description: tool.description(),
        source_code: source(tool, base_url, &params),
        json_schema: json!({
            "name": tool.as_str(),
            "description": tool.description(),
            "parameters": parameters,
        }),
    }
}

/// The argument schema as function-calling models take it: no `format` annotations, and an
/// optional argument as its plain type rather than a `[type, "null"]` union.
fn model_schema(schema: &Map<String, Value>) -> Value {
    let mut schema = Value::Object(schema.clone());
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for property in properties.values_mut().filter_map(Value::as_object_mut) {
            property.remove("format");
            if let Some(Value::Array(types)) = property.get("type") {
                let plain: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                if let [only] = plain.as_slice() {
                    let only = (*only).clone();
                    property.insert("type".into(), only);
                }
            }
        }
    }
    schema
}

/// One argument of a tool's Python function.
struct Param {
    name: String,
    python_type: &'static str,
    description: String,
    required: bool,
}

impl Param {
    fn all(schema: &Value) -> Vec<Self> {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut params: Vec<Self> = schema["properties"]
            .as_object()
            .map(|properties| {
                properties
                    .iter()
                    .map(|(name, property)| Self {
                        name: name.clone(),
                        python_type: match property["type"].as_str() {
                            Some("string") => "str",
                            Some("integer") => "int",
                            Some("boolean") => "bool",
                            Some("array") => "list",
                            Some("number") => "float",
                            _ => "object",
                        },
                        description: property["description"].as_str().unwrap_or(name).to_owned(),
                        required: required.contains(&name.as_str()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Python wants the arguments without defaults first; those in their declared order (a
        // schema's properties come sorted, its `required` list does not).
        params.sort_by_key(|param| {
            required
                .iter()
                .position(|name| *name == param.name)
                .unwrap_or(usize::MAX)
        });
        params
    }
}

/// Text that is safe inside a `"""` docstring.
fn docstring_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace("\"\"\"", "'''")
}

fn source(tool: ToolName, base_url: &str, params: &[Param]) -> String {
    let name = tool.as_str();
    let signature: Vec<String> = params
        .iter()
        .map(|p| match p.required {
            true => format!("{}: {}", p.name, p.python_type),
            false => format!("{}: {} = None", p.name, p.python_type),
        })
        .collect();
    let mut doc = format!("{}\n", docstring_text(tool.description()));
    if !params.is_empty() {
        doc.push_str("\n    Args:\n");
        for p in params {
            doc.push_str(&format!(
                "        {} ({}): {}\n",
                p.name,
                p.python_type,
                docstring_text(&p.description)
            ));
        }
    }
    let arguments: Vec<String> = params.iter().map(|p| format!("{:?}: {}", p.name, p.name)).collect();
    // A JSON string is a valid Python string literal.
    let url = Value::String(format!("{}/tools/{name}", base_url.trim_end_matches('/'))).to_string();
    format!(
        r#"def {name}({signature}) -> str:
    """{doc}
    Returns:
        str: The answer, as JSON.
    """
    import json
    import os
    import urllib.error
    import urllib.request

    arguments = {{{arguments}}}
    body = json.dumps({{key: value for key, value in arguments.items() if value is not None}}).encode()
    request = urllib.request.Request(
        {url},
        data=body,
        method="POST",
        headers={{
            "Content-Type": "application/json",
            "Authorization": "Bearer " + os.environ.get("{TOKEN_SECRET}", ""),
            "x-agent-id": os.environ.get("LETTA_AGENT_ID", ""),
        }},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        try:
            reason = json.loads(error.read().decode()).get("error")
        except ValueError:
            reason = None
        raise RuntimeError(reason or "letta-matrix answered HTTP %d" % error.code) from None
    except urllib.error.URLError as error:
        raise RuntimeError("cannot reach letta-matrix: %s" % error.reason) from None
"#,
        signature = signature.join(", "),
        arguments = arguments.join(", "),
    )
}

/// What the tools look like, for telling whether an agent's tools are those of this version.
pub fn fingerprint(base_url: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for tool in tools(base_url) {
        digest.update(tool.source_code.as_bytes());
        digest.update(tool.json_schema.to_string().as_bytes());
    }
    hex::encode(&digest.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tool_calls_its_own_route_with_the_agents_credentials() {
        let tools = tools("http://letta-matrix:9000/");
        assert_eq!(tools.len(), ToolName::ALL.len());
        let message = tools.iter().find(|t| t.name == "matrix_agent_message").unwrap();
        assert!(
            message
                .source_code
                .starts_with("def matrix_agent_message(to_agent_id: str, message: str) -> str:")
        );
        assert!(
            message
                .source_code
                .contains(r#""http://letta-matrix:9000/tools/matrix_agent_message""#)
        );
        assert!(
            message
                .source_code
                .contains(r#"os.environ.get("LETTA_MATRIX_TOKEN", "")"#)
        );
        assert!(message.source_code.contains(r#"os.environ.get("LETTA_AGENT_ID", "")"#));
        assert_eq!(message.json_schema["name"], "matrix_agent_message");
        assert_eq!(
            message.json_schema["parameters"]["required"],
            json!(["to_agent_id", "message"])
        );
        let read = tools.iter().find(|t| t.name == "matrix_read_room").unwrap();
        assert!(
            read.source_code.contains("(room_id: str, limit: int = None)"),
            "{}",
            read.source_code
        );
        assert_eq!(read.json_schema["parameters"]["properties"]["limit"]["type"], "integer");
        assert!(
            read.json_schema["parameters"]["properties"]["limit"]
                .get("format")
                .is_none()
        );
        let list = tools.iter().find(|t| t.name == "list_agents").unwrap();
        assert!(list.source_code.starts_with("def list_agents() -> str:"));
    }

    /// Python itself reads every tool's source, and finds one function of the tool's name whose
    /// parameters are the schema's.
    #[test]
    fn every_source_is_python_with_the_schemas_parameters() {
        let check = r#"
import ast, json, sys
for tool in json.load(sys.stdin):
    tree = ast.parse(tool["source_code"])
    [function] = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert function.name == tool["name"], function.name
    parameters = sorted(a.arg for a in function.args.args)
    assert parameters == sorted(tool["properties"]), (tool["name"], parameters)
"#;
        let input: Vec<Value> = tools("http://h:1")
            .iter()
            .map(|t| json!({"name": t.name, "source_code": t.source_code, "properties": t.json_schema["parameters"]["properties"].as_object().unwrap().keys().collect::<Vec<_>>()}))
            .collect();
        let mut child = std::process::Command::new("python3")
            .args(["-c", check])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/test needs it too)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(Value::Array(input).to_string().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    #[test]
    fn the_fingerprint_follows_the_url() {
        assert_eq!(fingerprint("http://a:1"), fingerprint("http://a:1"));
        assert_ne!(fingerprint("http://a:1"), fingerprint("http://b:1"));
    }
}
