//! Who may call what: every route belongs to one group, each group has an allow-list of
//! peer uids and gids (`api.callers`), checked against the connection's SO_PEERCRED
//! before anything else runs ([`super::gate`] applies them).

use std::sync::Arc;

use axum::http::Method;
use serde::Serialize;

use super::extract::Caller;
use crate::config::{AllowList, CallerRules};
use crate::signing::SignKind;

/// The groups of routes an allow-list covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteGroup {
    /// `/healthz` and `/readyz`: open to anyone who can open the socket (the probes of
    /// a service manager or load balancer; they name checks, never keys).
    Health,
    Signing,
    Channels,
    ReadOnly,
    KeyAdmin,
}

impl RouteGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteGroup::Health => "health",
            RouteGroup::Signing => "signing",
            RouteGroup::Channels => "channels",
            RouteGroup::ReadOnly => "read_only",
            RouteGroup::KeyAdmin => "key_admin",
        }
    }

    /// The group of a request. Anything not listed as signing, channel use or a read is
    /// key administration, so a route added later is closed until it is placed here.
    pub fn of(method: &Method, path: &str) -> RouteGroup {
        match (method, path) {
            (_, "/healthz" | "/readyz") => RouteGroup::Health,
            (&Method::POST, "/v1/sign" | "/v1/fee-bump" | "/v1/soroban/authorize") => {
                RouteGroup::Signing
            }
            (
                &Method::POST,
                "/v1/channels/acquire" | "/v1/channels/release" | "/v1/channels/unlock",
            ) => RouteGroup::Channels,
            (&Method::GET | &Method::HEAD, _) => RouteGroup::ReadOnly,
            _ => RouteGroup::KeyAdmin,
        }
    }
}

/// The allow-lists in force.
#[derive(Debug, Clone)]
pub struct CallerPolicy {
    rules: Arc<CallerRules>,
}

impl CallerPolicy {
    pub fn new(rules: CallerRules) -> CallerPolicy {
        CallerPolicy {
            rules: Arc::new(rules),
        }
    }

    fn list(&self, group: RouteGroup) -> Option<&AllowList> {
        match group {
            RouteGroup::Health => None,
            RouteGroup::Signing => self.rules.signing.as_ref(),
            RouteGroup::Channels => self.rules.channels.as_ref(),
            RouteGroup::ReadOnly => self.rules.read_only.as_ref(),
            RouteGroup::KeyAdmin => self.rules.key_admin.as_ref(),
        }
    }

    /// Whether `caller` may call any route but the health probes.
    pub fn admits_beyond_health(&self, caller: &Caller) -> bool {
        [
            RouteGroup::Signing,
            RouteGroup::Channels,
            RouteGroup::ReadOnly,
            RouteGroup::KeyAdmin,
        ]
        .into_iter()
        .any(|group| self.admits(group, caller))
    }

    /// Whether `caller` may call routes of `group`. A caller whose credentials could not
    /// be read is admitted only where no allow-list applies.
    pub fn admits(&self, group: RouteGroup, caller: &Caller) -> bool {
        self.list(group)
            .is_none_or(|list| list.admits(caller.uid, caller.gid))
    }
}

/// The signing kind of a route that signs, as the audit log and the metrics name it.
pub(super) fn signing_kind(method: &Method, route: &str) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    let kind = match route {
        "/v1/sign" => SignKind::Sign,
        "/v1/fee-bump" => SignKind::FeeBump,
        "/v1/soroban/authorize" => SignKind::SorobanAuth,
        "/v1/channels/provision" => SignKind::Provisioning,
        _ => return None,
    };
    Some(kind.as_str())
}

pub(super) fn id_text(id: Option<u32>) -> String {
    id.map_or_else(|| "unknown".to_string(), |id| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid: Some(uid),
            gid: Some(gid),
            pid: Some(1),
        }
    }

    /// Only a caller no group's list admits is probe-only: an open group admits
    /// everyone, and a caller whose credentials could not be read is admitted by no
    /// list.
    #[test]
    fn probe_only_callers_are_those_no_group_admits() {
        let listed = |uids: Vec<u32>| Some(AllowList { uids, gids: vec![] });
        let every_group_listed = CallerPolicy::new(CallerRules {
            signing: listed(vec![1001]),
            channels: listed(vec![1002]),
            read_only: listed(vec![1003]),
            key_admin: listed(vec![0]),
        });
        for uid in [1001, 1002, 1003, 0] {
            assert!(every_group_listed.admits_beyond_health(&caller(uid, 5)));
        }
        assert!(!every_group_listed.admits_beyond_health(&caller(4242, 5)));
        assert!(!every_group_listed.admits_beyond_health(&Caller::default()));
        let one_open = CallerPolicy::new(CallerRules {
            read_only: None,
            ..every_group_listed.rules.as_ref().clone()
        });
        assert!(one_open.admits_beyond_health(&caller(4242, 5)));
    }

    #[test]
    fn every_route_of_the_router_has_the_group_its_purpose_needs() {
        let post = Method::POST;
        assert_eq!(RouteGroup::of(&post, "/v1/sign"), RouteGroup::Signing);
        assert_eq!(RouteGroup::of(&post, "/v1/fee-bump"), RouteGroup::Signing);
        assert_eq!(
            RouteGroup::of(&post, "/v1/channels/unlock"),
            RouteGroup::Channels
        );
        for admin in [
            "/v1/keys",
            "/v1/keys/generate",
            "/v1/keys/verify",
            "/v1/keys/rewrap",
            "/v1/keys/retire",
            "/v1/keys/import/wallet-backend",
            "/v1/channels/provision",
            "/v1/channels/activate",
            "/v1/channels/withdraw",
            "/v1/channels/merge",
            "/v1/channels/retire",
            "/v1/some-future-route",
        ] {
            assert_eq!(
                RouteGroup::of(&post, admin),
                RouteGroup::KeyAdmin,
                "{admin}"
            );
        }
        assert_eq!(
            RouteGroup::of(&Method::GET, "/v1/keys"),
            RouteGroup::ReadOnly
        );
        assert_eq!(RouteGroup::of(&Method::GET, "/healthz"), RouteGroup::Health);
        assert_eq!(RouteGroup::of(&Method::GET, "/readyz"), RouteGroup::Health);
        // A GET on a signing route is a read (it answers method_not_allowed), never a
        // way around the signing list; a DELETE anywhere is administration.
        assert_eq!(
            RouteGroup::of(&Method::DELETE, "/v1/sign"),
            RouteGroup::KeyAdmin
        );
    }

    #[test]
    fn allow_lists_admit_by_uid_or_gid_and_an_absent_list_admits_all() {
        let policy = CallerPolicy::new(CallerRules {
            signing: Some(AllowList {
                uids: vec![1001],
                gids: vec![2002],
            }),
            channels: None,
            read_only: Some(AllowList::default()),
            key_admin: Some(AllowList {
                uids: vec![0],
                gids: vec![],
            }),
        });
        assert!(policy.admits(RouteGroup::Signing, &caller(1001, 5)));
        assert!(policy.admits(RouteGroup::Signing, &caller(7, 2002)));
        assert!(!policy.admits(RouteGroup::Signing, &caller(7, 5)));
        assert!(!policy.admits(RouteGroup::Signing, &Caller::default()));
        assert!(policy.admits(RouteGroup::Channels, &caller(7, 5)));
        assert!(!policy.admits(RouteGroup::ReadOnly, &caller(0, 0)));
        assert!(policy.admits(RouteGroup::Health, &caller(7, 5)));
        assert!(policy.admits(RouteGroup::KeyAdmin, &caller(0, 5)));
        assert!(!policy.admits(RouteGroup::KeyAdmin, &caller(1001, 2002)));
    }
}
