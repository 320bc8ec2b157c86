//! Evaluates a KMS key policy the way KMS does for the parts this project relies on:
//! `Allow`/`Deny` statements, principals, actions with wildcards, and conditions with
//! `StringEquals`, `StringEqualsIgnoreCase`, `StringNotEquals`, `StringLike`, `Null`
//! and `Bool` over request context keys such as `kms:RecipientAttestation:PCR0`.
//! An explicit Deny wins over any Allow; with no matching Allow the answer is Deny.
//!
//! Unknown condition operators are an error when the policy is loaded, never silently
//! ignored: a mock that quietly admitted what real KMS refuses would prove nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy is not valid JSON: {0}")]
    Json(String),
    #[error("statement {statement}: {problem}")]
    Statement { statement: String, problem: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Null,
    Bool,
}

#[derive(Debug, Clone)]
struct Condition {
    operator: Operator,
    key: String,
    values: Vec<String>,
}

#[derive(Debug, Clone)]
struct Statement {
    name: String,
    effect: Effect,
    /// `None` means `"*"`.
    principals: Option<Vec<String>>,
    actions: Vec<String>,
    /// `*` (this key, in a key policy) or key ARNs, possibly with wildcards.
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// One request as the policy sees it.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub principal_arn: String,
    /// e.g. `kms:Decrypt`.
    pub action: String,
    /// The ARN of the key the request acts on (empty for `CreateKey`).
    pub resource: String,
    /// Condition keys present in this request, e.g. `kms:RecipientAttestation:PCR0`
    /// (lower-case hex) or `kms:EncryptionContext:pubkey`.
    pub keys: BTreeMap<String, String>,
}

/// Why a request was allowed or denied, for error messages and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    pub reason: String,
}

#[derive(Deserialize)]
struct RawPolicy {
    #[serde(rename = "Statement")]
    statement: OneOrMany<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    // `Many` first: a JSON array would also deserialize as one `Value`.
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

fn strings(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Bool(b) => Some(vec![b.to_string()]),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy =
            serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        let statements = raw
            .statement
            .into_vec()
            .into_iter()
            .enumerate()
            .map(|(index, value)| parse_statement(index, &value))
            .collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }

    pub fn evaluate(&self, request: &RequestContext) -> Decision {
        let mut allowed_by = None;
        for statement in &self.statements {
            if !statement.applies_to(request) {
                continue;
            }
            match statement.effect {
                Effect::Deny => {
                    return Decision {
                        effect: Effect::Deny,
                        reason: format!("explicitly denied by statement {}", statement.name),
                    };
                }
                Effect::Allow => allowed_by = allowed_by.or(Some(statement.name.clone())),
            }
        }
        match allowed_by {
            Some(name) => Decision {
                effect: Effect::Allow,
                reason: format!("allowed by statement {name}"),
            },
            None => Decision {
                effect: Effect::Deny,
                reason: format!(
                    "no statement allows {} for {} with this request's attestation and context",
                    request.action, request.principal_arn
                ),
            },
        }
    }
}

fn parse_statement(index: usize, value: &Value) -> Result<Statement, PolicyError> {
    let name = value
        .get("Sid")
        .and_then(Value::as_str)
        .map_or_else(|| format!("#{index}"), str::to_string);
    let problem = |problem: String| PolicyError::Statement {
        statement: name.clone(),
        problem,
    };
    let effect = match value.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        other => {
            return Err(problem(format!(
                "Effect must be Allow or Deny, got {other:?}"
            )));
        }
    };
    if value.get("NotAction").is_some() || value.get("NotPrincipal").is_some() {
        return Err(problem(
            "NotAction and NotPrincipal are not supported".into(),
        ));
    }
    let principals = match value.get("Principal") {
        Some(Value::String(s)) if s == "*" => None,
        Some(Value::Object(map)) => {
            let aws = map
                .get("AWS")
                .ok_or_else(|| problem("only AWS principals are supported".into()))?;
            let list =
                strings(aws).ok_or_else(|| problem("Principal.AWS must be strings".into()))?;
            if list.iter().any(|p| p == "*") {
                None
            } else {
                Some(list)
            }
        }
        other => return Err(problem(format!("unsupported Principal {other:?}"))),
    };
    let actions = value
        .get("Action")
        .and_then(strings)
        .ok_or_else(|| problem("Action must be a string or a list of strings".into()))?;
    // KMS accepts a statement without a Resource but ignores it; refusing it here
    // catches the template mistake instead.
    let resources = value
        .get("Resource")
        .and_then(strings)
        .ok_or_else(|| problem("Resource must be \"*\" or key ARNs".into()))?;
    let mut conditions = Vec::new();
    if let Some(block) = value.get("Condition") {
        let block = block
            .as_object()
            .ok_or_else(|| problem("Condition must be an object".into()))?;
        for (operator_name, keys) in block {
            let operator = match operator_name.as_str() {
                "StringEquals" => Operator::StringEquals,
                "StringNotEquals" => Operator::StringNotEquals,
                "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
                "StringLike" => Operator::StringLike,
                "Null" => Operator::Null,
                "Bool" => Operator::Bool,
                other => {
                    return Err(problem(format!(
                        "condition operator {other} is not supported"
                    )));
                }
            };
            let keys = keys
                .as_object()
                .ok_or_else(|| problem(format!("{operator_name} must map keys to values")))?;
            for (key, values) in keys {
                let values = strings(values).ok_or_else(|| {
                    problem(format!("{operator_name}.{key}: values must be strings"))
                })?;
                conditions.push(Condition {
                    operator: operator.clone(),
                    key: key.clone(),
                    values,
                });
            }
        }
    }
    Ok(Statement {
        name,
        effect,
        principals,
        actions,
        resources,
        conditions,
    })
}

/// IAM-style wildcard match: `*` any run, `?` one character. Case-sensitive.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Statement {
    fn applies_to(&self, request: &RequestContext) -> bool {
        let principal_ok = match &self.principals {
            None => true,
            Some(list) => list.iter().any(|p| p == &request.principal_arn),
        };
        // Action names are case-insensitive in IAM.
        let action = request.action.to_ascii_lowercase();
        let action_ok = self
            .actions
            .iter()
            .any(|a| wildcard_match(&a.to_ascii_lowercase(), &action));
        let resource_ok = self
            .resources
            .iter()
            .any(|r| r == "*" || wildcard_match(r, &request.resource));
        principal_ok && action_ok && resource_ok && self.conditions.iter().all(|c| c.holds(request))
    }
}

impl Condition {
    fn holds(&self, request: &RequestContext) -> bool {
        // Condition key names are case-insensitive.
        let present = request
            .keys
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&self.key))
            .map(|(_, v)| v.as_str());
        match self.operator {
            Operator::Null => {
                let want_absent = self.values.iter().any(|v| v == "true");
                present.is_none() == want_absent
            }
            // For every other operator an absent key never matches (IAM semantics),
            // except the negated one, which matches when the key is absent.
            Operator::StringNotEquals => present.is_none_or(|v| self.values.iter().all(|x| x != v)),
            _ => {
                let Some(value) = present else {
                    return false;
                };
                self.values.iter().any(|expected| match self.operator {
                    Operator::StringEquals | Operator::Bool => expected == value,
                    Operator::StringEqualsIgnoreCase => expected.eq_ignore_ascii_case(value),
                    Operator::StringLike => wildcard_match(expected, value),
                    Operator::Null | Operator::StringNotEquals => false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::111122223333:role/signer-host";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/test";

    fn policy(pcr0: &str) -> Policy {
        Policy::parse(&format!(
            r#"{{
              "Version": "2012-10-17",
              "Statement": [
                {{"Sid": "Admin", "Effect": "Allow",
                  "Principal": {{"AWS": "arn:aws:iam::111122223333:root"}},
                  "Action": "kms:*", "Resource": "*"}},
                {{"Sid": "EnclaveDecrypt", "Effect": "Allow",
                  "Principal": {{"AWS": ["{ROLE}"]}},
                  "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
                  "Condition": {{"StringEqualsIgnoreCase": {{
                      "kms:RecipientAttestation:PCR0": ["{pcr0}", "{other}"]}}}}}},
                {{"Sid": "DenyWithoutAttestation", "Effect": "Deny",
                  "Principal": {{"AWS": "*"}},
                  "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
                  "Condition": {{"Null": {{"kms:RecipientAttestation:PCR0": "true"}}}}}}
              ]
            }}"#,
            other = "ab".repeat(48)
        ))
        .unwrap()
    }

    fn request(action: &str, pcr0: Option<&str>) -> RequestContext {
        let mut keys = BTreeMap::new();
        if let Some(pcr0) = pcr0 {
            keys.insert(
                "kms:RecipientAttestation:PCR0".to_string(),
                pcr0.to_string(),
            );
        }
        RequestContext {
            principal_arn: ROLE.to_string(),
            action: action.to_string(),
            resource: KEY.to_string(),
            keys,
        }
    }

    #[test]
    fn matching_pcr_is_allowed_and_any_listed_value_matches() {
        let pcr0 = "0f".repeat(48);
        let p = policy(&pcr0);
        assert_eq!(
            p.evaluate(&request("kms:Decrypt", Some(&pcr0))).effect,
            Effect::Allow
        );
        // Upper-case hex still matches under StringEqualsIgnoreCase.
        let upper = pcr0.to_ascii_uppercase();
        assert_eq!(
            p.evaluate(&request("kms:Decrypt", Some(&upper))).effect,
            Effect::Allow
        );
        assert_eq!(
            p.evaluate(&request("kms:GenerateDataKey", Some(&"ab".repeat(48))))
                .effect,
            Effect::Allow
        );
    }

    #[test]
    fn other_pcr_missing_attestation_and_other_actions_are_denied() {
        let p = policy(&"0f".repeat(48));
        let wrong = p.evaluate(&request("kms:Decrypt", Some(&"11".repeat(48))));
        assert_eq!(wrong.effect, Effect::Deny);
        assert!(
            wrong.reason.contains("no statement allows"),
            "{}",
            wrong.reason
        );
        let missing = p.evaluate(&request("kms:Decrypt", None));
        assert_eq!(missing.effect, Effect::Deny);
        assert!(
            missing.reason.contains("DenyWithoutAttestation"),
            "{}",
            missing.reason
        );
        assert_eq!(
            p.evaluate(&request("kms:Encrypt", Some(&"0f".repeat(48))))
                .effect,
            Effect::Deny
        );
    }

    #[test]
    fn explicit_deny_beats_the_admin_allow() {
        let p = policy(&"0f".repeat(48));
        let mut admin = request("kms:Decrypt", None);
        admin.principal_arn = "arn:aws:iam::111122223333:root".into();
        assert_eq!(p.evaluate(&admin).effect, Effect::Deny);
        admin.action = "kms:CreateKey".into();
        assert_eq!(p.evaluate(&admin).effect, Effect::Allow);
    }

    #[test]
    fn unsupported_constructs_are_refused_at_load() {
        let bad = r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*",
                      "Resource": "*", "Condition": {"NumericLessThan": {"x": "1"}}}}"#;
        assert!(matches!(
            Policy::parse(bad),
            Err(PolicyError::Statement { .. })
        ));
        assert!(Policy::parse("{").is_err());
        let without_resource =
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt"}}"#;
        assert!(matches!(
            Policy::parse(without_resource),
            Err(PolicyError::Statement { .. })
        ));
        let single = r#"{"Statement": {"Effect": "Allow", "Principal": "*",
                         "Action": "kms:Encrypt", "Resource": "*"}}"#;
        let p = Policy::parse(single).unwrap();
        assert_eq!(
            p.evaluate(&request("kms:Encrypt", None)).effect,
            Effect::Allow
        );
    }

    #[test]
    fn a_statement_naming_another_key_does_not_apply() {
        let policy = |resource: &str| {
            Policy::parse(&format!(
                r#"{{"Statement": {{"Effect": "Allow", "Principal": "*",
                     "Action": "kms:Decrypt", "Resource": "{resource}"}}}}"#
            ))
            .unwrap()
        };
        let decrypt = request("kms:Decrypt", None);
        for allowing in ["*", KEY, "arn:aws:kms:us-east-1:111122223333:key/*"] {
            assert_eq!(policy(allowing).evaluate(&decrypt).effect, Effect::Allow);
        }
        let other = "arn:aws:kms:us-east-1:111122223333:key/other";
        assert_eq!(policy(other).evaluate(&decrypt).effect, Effect::Deny);
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(
            "kms:generatedatakey*",
            "kms:generatedatakey"
        ));
        assert!(wildcard_match(
            "kms:generatedatakey*",
            "kms:generatedatakeywithoutplaintext"
        ));
        assert!(wildcard_match("kms:*", "kms:decrypt"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("kms:decrypt", "kms:decrypt2"));
        assert!(!wildcard_match("kms:en*", "kms:decrypt"));
    }
}
