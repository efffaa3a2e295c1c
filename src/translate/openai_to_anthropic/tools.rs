//! Tools, `tool_choice` and `response_format` (OpenAI request → Anthropic request).
//!
//! * `{type:function, function:{name, description?, parameters?, strict?}}` →
//!   `{name, description?, input_schema, strict?}`; missing `parameters` →
//!   `{"type":"object","properties":{}}` (Anthropic requires a schema). `strict: true` passes:
//!   Anthropic's strict tool use is the same guarantee (models without it reject the request,
//!   which is better than silently losing the guarantee).
//! * `tool_choice`: `auto` → `{type:auto}`, `none` → `{type:none}`, `required` → `{type:any}`,
//!   `{type:function,function:{name}}` → `{type:tool,name}`; allowed-tools and custom choices are
//!   untranslatable. `parallel_tool_calls: false` → `disable_parallel_tool_use: true` on the choice
//!   (on `{type:auto}` when the client set no choice; not on `none`, which has no such field).
//!   Without tools, no `tool_choice` is sent (Anthropic would reject it, and it asks for nothing).

use serde_json::{Map, Value, json};

use super::TARGET;
use crate::translate::util::{array, boolean, given, object, required_str, string, unsupported};
use crate::translate::{RequestOptions, TranslateError};

/// `tools` → Anthropic tool definitions (untranslatable tools dropped only with the route flag).
pub(super) fn tools(value: &Value, opts: &RequestOptions) -> Result<Vec<Value>, TranslateError> {
    let items = array(value, "tools")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, tool) in items.iter().enumerate() {
        let param = format!("tools[{i}]");
        let tool = object(tool, &param)?;
        match tool.get("type").and_then(Value::as_str) {
            Some("function") | None => {}
            Some(_) => {
                unsupported(opts, &param, TARGET)?;
                continue;
            }
        }
        let func = match given(tool.get("function")) {
            Some(f) => object(f, &format!("{param}.function"))?,
            None => {
                return Err(TranslateError::field(
                    format!("{param}.function"),
                    "required field is missing",
                ));
            }
        };
        let mut def = Map::new();
        def.insert(
            "name".into(),
            json!(required_str(func, "name", &format!("{param}.function.name"))?),
        );
        if let Some(d) = given(func.get("description")) {
            def.insert(
                "description".into(),
                json!(string(d, &format!("{param}.function.description"))?),
            );
        }
        let schema = match given(func.get("parameters")) {
            Some(p) => Value::Object(object(p, &format!("{param}.function.parameters"))?.clone()),
            None => json!({ "type": "object", "properties": {} }),
        };
        def.insert("input_schema".into(), schema);
        if let Some(s) = given(func.get("strict"))
            && boolean(s, &format!("{param}.function.strict"))?
        {
            def.insert("strict".into(), Value::Bool(true));
        }
        out.push(Value::Object(def));
    }
    Ok(out)
}

/// `tool_choice` + `parallel_tool_calls` → Anthropic `tool_choice` (None: send none).
pub(super) fn tool_choice(
    choice: Option<&Value>,
    parallel: Option<&Value>,
    opts: &RequestOptions,
) -> Result<Option<Value>, TranslateError> {
    let no_parallel = match parallel {
        Some(p) => !boolean(p, "parallel_tool_calls")?,
        None => false,
    };
    let mut out = match choice {
        None => json!({ "type": "auto" }),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "none" => return Ok(Some(json!({ "type": "none" }))),
            "required" => json!({ "type": "any" }),
            _ => {
                return Err(TranslateError::field(
                    "tool_choice",
                    "expected auto, none, required or a function",
                ));
            }
        },
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("function") => {
                let func = match given(o.get("function")) {
                    Some(f) => object(f, "tool_choice.function")?,
                    None => {
                        return Err(TranslateError::field(
                            "tool_choice.function",
                            "required field is missing",
                        ));
                    }
                };
                json!({ "type": "tool", "name": required_str(func, "name", "tool_choice.function.name")? })
            }
            _ => {
                unsupported(opts, "tool_choice", TARGET)?;
                json!({ "type": "auto" })
            }
        },
        Some(_) => {
            return Err(TranslateError::field("tool_choice", "expected a string or an object"));
        }
    };
    if no_parallel {
        if let Some(map) = out.as_object_mut() {
            map.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    } else if choice.is_none() {
        return Ok(None);
    }
    Ok(Some(out))
}

/// `response_format` → Anthropic `output_config` (None: nothing to send).
pub(super) fn response_format(
    value: &Value,
    opts: &RequestOptions,
) -> Result<Option<Value>, TranslateError> {
    let format = object(value, "response_format")?;
    match format.get("type").and_then(Value::as_str) {
        Some("text") | Some("json_object") => Ok(None),
        Some("json_schema") => {
            let spec = match given(format.get("json_schema")) {
                Some(s) => object(s, "response_format.json_schema")?,
                None => {
                    return Err(TranslateError::field(
                        "response_format.json_schema",
                        "required field is missing",
                    ));
                }
            };
            match given(spec.get("schema")) {
                Some(schema) => {
                    let schema = object(schema, "response_format.json_schema.schema")?;
                    Ok(Some(json!({ "format": { "type": "json_schema", "schema": schema } })))
                }
                None => {
                    // OpenAI allows a schema-less json_schema; Anthropic needs a schema.
                    unsupported(opts, "response_format.json_schema.schema", TARGET)?;
                    Ok(None)
                }
            }
        }
        _ => {
            unsupported(opts, "response_format", TARGET)?;
            Ok(None)
        }
    }
}
