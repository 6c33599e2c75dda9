//! Registry authentication: the `WWW-Authenticate` challenge, Basic credentials and Bearer
//! tokens from the registry's token endpoint (Distribution's token auth spec).
//!
//! Hand-written because it is small and the crates that do it pull an async runtime: a
//! challenge parser (RFC 7235 auth-params, quoted strings) and one GET (or, with an identity
//! token, one OAuth2 POST) per token. Knows nothing of manifests or blobs.

use super::credentials::{Credential, Secret};
use super::RegistryError;
use base64::Engine as _;
use std::time::{Duration, Instant};

/// What a registry asked for in its 401 answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value. Returns `None` for schemes kiln does not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// `key=value, key="quoted, \"value\""` into pairs.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_ascii_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return params;
        }
        if chars.next() != Some('=') {
            if chars.peek().is_none() {
                return params;
            }
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_string(), value.trim_end().to_string()));
    }
}

/// The `Authorization` value for Basic credentials.
pub fn basic_header(username: &str, password: &Secret) -> Secret {
    let raw = format!("{username}:{}", password.expose());
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// A bearer token and when to stop using it.
#[derive(Clone, Debug)]
pub struct Token {
    pub value: Secret,
    pub expires_at: Instant,
}

impl Token {
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.expires_at
    }
    pub fn header(&self) -> Secret {
        Secret::new(format!("Bearer {}", self.value.expose()))
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Where and how to ask for a token.
pub struct TokenRequest<'a> {
    pub registry: &'a str,
    /// Only names what the token is for in errors.
    pub repository: &'a str,
    pub realm: &'a str,
    pub service: Option<&'a str>,
    pub scopes: &'a [String],
    pub credential: Option<&'a Credential>,
    /// Attempts on connection failures and 5xx answers, and the first delay between them.
    pub attempts: u32,
    pub backoff: Duration,
}

/// Asks the realm for a token covering the scopes, authenticating with the credential if
/// given; connection failures and 5xx answers are retried with doubling delays.
pub fn fetch_token(agent: &ureq::Agent, request: &TokenRequest) -> Result<Token, RegistryError> {
    let mut n_failures = 0;
    loop {
        match fetch_token_once(agent, request) {
            Err(failure) if failure.1 && n_failures + 1 < request.attempts.max(1) => {
                n_failures += 1;
                std::thread::sleep(request.backoff * 2u32.pow((n_failures - 1).min(6)));
            }
            Err(failure) => return Err(failure.0),
            Ok(token) => return Ok(token),
        }
    }
}

/// One token request; an error comes with whether trying again could help.
fn fetch_token_once(
    agent: &ureq::Agent,
    request: &TokenRequest,
) -> Result<Token, Box<(RegistryError, bool)>> {
    let TokenRequest {
        registry,
        repository,
        realm,
        service,
        scopes,
        credential,
        ..
    } = *request;
    let token_error = |detail: String| RegistryError::Token {
        registry: registry.to_string(),
        realm: realm.to_string(),
        detail,
    };
    let result = match credential {
        Some(Credential::IdentityToken(refresh_token)) => {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose()),
                ("client_id", "kiln"),
            ];
            if let Some(service) = service {
                form.push(("service", service));
            }
            let scope = scopes.join(" ");
            if !scope.is_empty() {
                form.push(("scope", &scope));
            }
            agent.post(realm).send_form(&form)
        }
        other => {
            let mut request = agent.get(realm);
            if let Some(service) = service {
                request = request.query("service", service);
            }
            for scope in scopes {
                request = request.query("scope", scope);
            }
            if let Some(Credential::Basic { username, password }) = other {
                request = request.set("Authorization", basic_header(username, password).expose());
            }
            request.call()
        }
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(status @ (401 | 403), _)) => {
            let who = match credential {
                Some(Credential::Basic { username, .. }) => format!("user {username:?}"),
                Some(Credential::IdentityToken(_)) => "the stored identity token".to_string(),
                None => "anonymous access".to_string(),
            };
            let err = RegistryError::Unauthorized {
                registry: registry.to_string(),
                repository: repository.to_string(),
                detail: format!("token endpoint {realm} refused {who} (HTTP {status})"),
            };
            return Err(Box::new((err, false)));
        }
        Err(ureq::Error::Status(status, _)) => {
            let retryable = matches!(status, 408 | 429 | 500 | 502 | 503 | 504);
            return Err(Box::new((token_error(format!("HTTP {status}")), retryable)));
        }
        Err(ureq::Error::Transport(transport)) => {
            return Err(Box::new((token_error(transport.to_string()), true)))
        }
    };
    let body: TokenResponse = response.into_json().map_err(|err| {
        Box::new((
            token_error(format!("unreadable token response: {err}")),
            false,
        ))
    })?;
    let value = body
        .token
        .filter(|t| !t.is_empty())
        .or(body.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Box::new((
                token_error("the response holds no token".to_string()),
                false,
            ))
        })?;
    // The spec's default lifetime is 60 s; renew a little early so a request never races expiry.
    let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(1));
    let margin = (lifetime / 10).min(Duration::from_secs(10));
    Ok(Token {
        value: Secret::new(value),
        expires_at: Instant::now() + lifetime - margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: &str, expect: Option<Challenge>) {
        assert_eq!(parse_challenge(header), expect, "{header}");
    }

    #[test]
    fn parses_challenges() {
        check(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }),
        );
        check(
            r#"Bearer realm="http://127.0.0.1:1/token", scope="repository:a:pull,push""#,
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
                scope: Some("repository:a:pull,push".into()),
            }),
        );
        check(r#"Basic realm="basic-realm""#, Some(Challenge::Basic));
        check("basic", Some(Challenge::Basic));
        check(r#"Bearer service="x""#, None);
        check("Negotiate abc", None);
        check(
            r#"Bearer realm=unquoted,service="a \"q\"""#,
            Some(Challenge::Bearer {
                realm: "unquoted".into(),
                service: Some("a \"q\"".into()),
                scope: None,
            }),
        );
    }

    #[test]
    fn basic_header_is_base64_and_hidden_in_debug() {
        let header = basic_header("user", &Secret::new("pass"));
        assert_eq!(header.expose(), "Basic dXNlcjpwYXNz");
        assert_eq!(format!("{header:?}"), "***");
    }
}
