//! The `nats` bodies of the three JWTs of an auth callout (nats-io/jwt v2 field names): the
//! server's authorization request, our authorization response, and the user claims it carries.

use serde::{Deserialize, Serialize};

/// The body of the request nats-server signs with its server nkey.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestBody {
    pub server_id: ServerId,
    /// The user nkey the server minted for this connection: our answer must name it.
    pub user_nkey: String,
    #[serde(default)]
    pub client_info: ClientInfo,
    #[serde(default)]
    pub connect_opts: ConnectOpts,
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ServerId {
    pub id: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClientInfo {
    /// The connection id on that server (`cid`).
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub name: String,
}

/// What the client sent in CONNECT.
#[derive(Clone, Default, Deserialize)]
pub struct ConnectOpts {
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub pass: Option<String>,
}

impl std::fmt::Debug for ConnectOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOpts")
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub const REQUEST_TYPE: &str = "authorization_request";
const RESPONSE_TYPE: &str = "authorization_response";
const USER_TYPE: &str = "user";
const VERSION: u8 = 2;

/// Our answer: a user JWT, or an error (the client then gets "authorization violation").
#[derive(Clone, Debug, Serialize)]
pub struct ResponseBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

impl ResponseBody {
    pub fn allow(jwt: String) -> Self {
        Self {
            jwt: Some(jwt),
            error: None,
            kind: RESPONSE_TYPE,
            version: VERSION,
        }
    }

    pub fn deny(error: String) -> Self {
        Self {
            jwt: None,
            error: Some(error),
            kind: RESPONSE_TYPE,
            version: VERSION,
        }
    }
}

/// One direction's allow-list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allow {
    pub allow: Vec<String>,
}

/// A user's permissions and limits (`-1`: no limit beyond the account's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserBody {
    #[serde(rename = "pub")]
    pub publish: Allow,
    #[serde(rename = "sub")]
    pub subscribe: Allow,
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
}

impl UserBody {
    pub fn new(publish: Vec<String>, subscribe: Vec<String>) -> Self {
        Self {
            publish: Allow { allow: publish },
            subscribe: Allow { allow: subscribe },
            subs: -1,
            data: -1,
            payload: -1,
            kind: USER_TYPE.into(),
            version: VERSION,
        }
    }
}
