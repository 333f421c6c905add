//! Conversions between the protobuf API messages and the core's client
//! requests and responses. Validation of sizes is the core's; this only
//! checks shape (a oneof that must be set, an enum value that must be known).

use ringkv_core::kv::{KeyValue, Precondition};
use ringkv_core::node::{ClientError, ClientRequest, ClientResponse, Consistency, Expiry};
use ringkv_proto::v1 as pb;

pub fn consistency_from_proto(c: i32) -> Result<Consistency, String> {
    match pb::ReadConsistency::try_from(c) {
        Ok(pb::ReadConsistency::Unspecified | pb::ReadConsistency::Linearizable) => {
            Ok(Consistency::Linearizable)
        }
        Ok(pb::ReadConsistency::Lease) => Ok(Consistency::Lease),
        Ok(pb::ReadConsistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(format!("unknown read consistency {c}")),
    }
}

pub fn consistency_to_proto(c: Consistency) -> pb::ReadConsistency {
    match c {
        Consistency::Linearizable => pb::ReadConsistency::Linearizable,
        Consistency::Lease => pb::ReadConsistency::Lease,
        Consistency::Stale => pb::ReadConsistency::Stale,
    }
}

pub fn precondition_from_proto(p: Option<pb::Precondition>) -> Precondition {
    use pb::precondition::Kind;
    match p.and_then(|p| p.kind) {
        None => Precondition::None,
        Some(Kind::MustNotExist(true)) => Precondition::MustNotExist,
        Some(Kind::MustExist(true)) => Precondition::MustExist,
        Some(Kind::MustNotExist(false) | Kind::MustExist(false)) => Precondition::None,
        Some(Kind::ModRevision(r)) => Precondition::ModRevision(r),
    }
}

pub fn precondition_to_proto(p: &Precondition) -> Option<pb::Precondition> {
    use pb::precondition::Kind;
    let kind = match p {
        Precondition::None => return None,
        Precondition::MustNotExist => Kind::MustNotExist(true),
        Precondition::MustExist => Kind::MustExist(true),
        Precondition::ModRevision(r) => Kind::ModRevision(*r),
    };
    Some(pb::Precondition { kind: Some(kind) })
}

/// A put's expiry (unset: none) or an expire's (unset: clear). A `keep`
/// flag that is false states nothing, as a false precondition flag.
pub fn expiry_from_proto(e: Option<pb::Expiry>) -> Expiry {
    use pb::expiry::Kind;
    match e.and_then(|e| e.kind) {
        None | Some(Kind::Keep(false)) => Expiry::Clear,
        Some(Kind::Keep(true)) => Expiry::Keep,
        Some(Kind::TtlMs(ms)) => Expiry::AfterMs(ms),
        Some(Kind::AtUnixMs(at)) => Expiry::AtUnixMs(at),
    }
}

pub fn expiry_to_proto(e: Expiry) -> Option<pb::Expiry> {
    use pb::expiry::Kind;
    let kind = match e {
        Expiry::Clear => return None,
        Expiry::Keep => Kind::Keep(true),
        Expiry::AfterMs(ms) => Kind::TtlMs(ms),
        Expiry::AtUnixMs(at) => Kind::AtUnixMs(at),
    };
    Some(pb::Expiry { kind: Some(kind) })
}

pub fn expire_request(r: pb::ExpireRequest) -> ClientRequest {
    ClientRequest::Expire {
        key: r.key,
        expiry: expiry_from_proto(r.expiry),
    }
}

pub fn get_request(r: pb::GetRequest) -> Result<ClientRequest, String> {
    Ok(ClientRequest::Get {
        key: r.key,
        consistency: consistency_from_proto(r.consistency)?,
    })
}

pub fn put_request(r: pb::PutRequest) -> ClientRequest {
    ClientRequest::Put {
        key: r.key,
        value: r.value,
        precondition: precondition_from_proto(r.precondition),
        return_previous: r.return_previous,
        expiry: expiry_from_proto(r.expiry),
    }
}

pub fn delete_request(r: pb::DeleteRequest) -> ClientRequest {
    ClientRequest::Delete {
        key: r.key,
        precondition: precondition_from_proto(r.precondition),
        return_previous: r.return_previous,
    }
}

pub fn increment_request(r: pb::IncrementRequest) -> ClientRequest {
    ClientRequest::Increment {
        key: r.key,
        delta: r.delta,
    }
}

pub fn append_request(r: pb::AppendRequest) -> ClientRequest {
    ClientRequest::Append {
        key: r.key,
        suffix: r.suffix,
    }
}

pub fn put_all_request(r: pb::PutAllRequest) -> ClientRequest {
    ClientRequest::PutAll {
        pairs: r.pairs.into_iter().map(|p| (p.key, p.value)).collect(),
    }
}

pub fn forward_request(req: &ClientRequest, from: u64, hops: u32) -> pb::ForwardRequest {
    use pb::forward_request::Request;
    let request = match req {
        ClientRequest::Get { key, consistency } => Request::Get(pb::GetRequest {
            key: key.clone(),
            consistency: consistency_to_proto(*consistency) as i32,
        }),
        ClientRequest::Put {
            key,
            value,
            precondition,
            return_previous,
            expiry,
        } => Request::Put(pb::PutRequest {
            key: key.clone(),
            value: value.clone(),
            precondition: precondition_to_proto(precondition),
            return_previous: *return_previous,
            expiry: expiry_to_proto(*expiry),
        }),
        ClientRequest::Expire { key, expiry } => Request::Expire(pb::ExpireRequest {
            key: key.clone(),
            expiry: expiry_to_proto(*expiry),
        }),
        ClientRequest::Delete {
            key,
            precondition,
            return_previous,
        } => Request::Delete(pb::DeleteRequest {
            key: key.clone(),
            precondition: precondition_to_proto(precondition),
            return_previous: *return_previous,
        }),
        ClientRequest::Increment { key, delta } => Request::Increment(pb::IncrementRequest {
            key: key.clone(),
            delta: *delta,
        }),
        ClientRequest::Append { key, suffix } => Request::Append(pb::AppendRequest {
            key: key.clone(),
            suffix: suffix.clone(),
        }),
        ClientRequest::CountKeys { key, consistency } => Request::Count(pb::CountRequest {
            key: key.clone(),
            consistency: consistency_to_proto(*consistency) as i32,
        }),
        ClientRequest::Scan {
            key,
            start,
            end,
            limit,
            keys_only,
            consistency,
        } => Request::Scan(pb::PartitionScanRequest {
            key: key.clone(),
            start: start.clone(),
            end: end.clone(),
            limit: *limit,
            keys_only: *keys_only,
            consistency: consistency_to_proto(*consistency) as i32,
        }),
        ClientRequest::PutAll { pairs } => Request::PutAll(pb::PutAllRequest {
            pairs: pairs
                .iter()
                .map(|(key, value)| pb::KeyValuePair {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
    };
    pb::ForwardRequest {
        from,
        hops,
        request: Some(request),
    }
}

/// The request inside a forward RPC, or why it is malformed.
pub fn forwarded_request(r: pb::ForwardRequest) -> Result<ClientRequest, String> {
    use pb::forward_request::Request;
    match r.request {
        Some(Request::Get(g)) => get_request(g),
        Some(Request::Put(p)) => Ok(put_request(p)),
        Some(Request::Delete(d)) => Ok(delete_request(d)),
        Some(Request::Increment(i)) => Ok(increment_request(i)),
        Some(Request::Append(a)) => Ok(append_request(a)),
        Some(Request::PutAll(p)) => Ok(put_all_request(p)),
        Some(Request::Expire(e)) => Ok(expire_request(e)),
        Some(Request::Count(c)) => Ok(ClientRequest::CountKeys {
            key: c.key,
            consistency: consistency_from_proto(c.consistency)?,
        }),
        Some(Request::Scan(s)) => Ok(ClientRequest::Scan {
            key: s.key,
            start: s.start,
            end: s.end,
            limit: s.limit,
            keys_only: s.keys_only,
            consistency: consistency_from_proto(s.consistency)?,
        }),
        None => Err("ForwardRequest.request is missing".to_owned()),
    }
}

pub fn put_response(
    version: u64,
    mod_revision: u64,
    created: bool,
    previous: &Option<KeyValue>,
) -> pb::PutResponse {
    pb::PutResponse {
        version,
        mod_revision,
        created,
        previous: previous.as_ref().map(KeyValue::to_proto),
    }
}

pub fn delete_response(revision: u64, previous: &Option<KeyValue>) -> pb::DeleteResponse {
    pb::DeleteResponse {
        revision,
        previous: previous.as_ref().map(KeyValue::to_proto),
    }
}

/// A result as the forward RPC carries it back.
pub fn forward_response(result: &Result<ClientResponse, ClientError>) -> pb::ForwardResponse {
    use pb::forward_response::Result as R;
    let r = match result {
        Ok(ClientResponse::Value(Some(kv))) => R::Get(pb::GetResponse {
            kv: Some(kv.to_proto()),
        }),
        Ok(ClientResponse::Value(None)) => R::Get(pb::GetResponse { kv: None }),
        Ok(ClientResponse::Put {
            version,
            mod_revision,
            created,
            previous,
        }) => R::Put(put_response(*version, *mod_revision, *created, previous)),
        Ok(ClientResponse::Deleted { revision, previous }) => {
            R::Delete(delete_response(*revision, previous))
        }
        Ok(ClientResponse::Incremented {
            value,
            version,
            mod_revision,
        }) => R::Increment(pb::IncrementResponse {
            value: *value,
            version: *version,
            mod_revision: *mod_revision,
        }),
        Ok(ClientResponse::Appended {
            len,
            version,
            mod_revision,
        }) => R::Append(pb::AppendResponse {
            len: *len,
            version: *version,
            mod_revision: *mod_revision,
        }),
        Ok(ClientResponse::Count(count)) => R::Count(pb::CountResponse { count: *count }),
        Ok(ClientResponse::Scanned { kvs, more }) => R::Scan(pb::PartitionScanResponse {
            kvs: kvs.iter().map(KeyValue::to_proto).collect(),
            more: *more,
        }),
        Ok(ClientResponse::PutAll {
            mod_revision,
            created,
        }) => R::PutAll(pb::PutAllResponse {
            mod_revision: *mod_revision,
            created: *created,
        }),
        Ok(ClientResponse::ExpirySet {
            changed,
            mod_revision,
        }) => R::Expire(pb::ExpireResponse {
            changed: *changed,
            mod_revision: *mod_revision,
        }),
        Err(e) => {
            let d = super::errors::ErrorDetails::of(e);
            R::Error(pb::ForwardError {
                code: super::errors::kind(e).code.to_owned(),
                message: e.to_string(),
                current_mod_revision: d.current_mod_revision,
                partition: d.partition,
                len: d.len,
                max: d.max,
            })
        }
    };
    pb::ForwardResponse { result: Some(r) }
}

/// The result a forward RPC brought back.
pub fn forwarded_response(r: pb::ForwardResponse) -> Result<ClientResponse, ClientError> {
    use pb::forward_response::Result as R;
    match r.result {
        Some(R::Get(g)) => Ok(ClientResponse::Value(g.kv.map(KeyValue::from_proto))),
        Some(R::Put(p)) => Ok(ClientResponse::Put {
            version: p.version,
            mod_revision: p.mod_revision,
            created: p.created,
            previous: p.previous.map(KeyValue::from_proto),
        }),
        Some(R::Delete(d)) => Ok(ClientResponse::Deleted {
            revision: d.revision,
            previous: d.previous.map(KeyValue::from_proto),
        }),
        Some(R::Increment(i)) => Ok(ClientResponse::Incremented {
            value: i.value,
            version: i.version,
            mod_revision: i.mod_revision,
        }),
        Some(R::Append(a)) => Ok(ClientResponse::Appended {
            len: a.len,
            version: a.version,
            mod_revision: a.mod_revision,
        }),
        Some(R::Count(c)) => Ok(ClientResponse::Count(c.count)),
        Some(R::Scan(s)) => Ok(ClientResponse::Scanned {
            kvs: s.kvs.into_iter().map(KeyValue::from_proto).collect(),
            more: s.more,
        }),
        Some(R::PutAll(p)) => Ok(ClientResponse::PutAll {
            mod_revision: p.mod_revision,
            created: p.created,
        }),
        Some(R::Expire(e)) => Ok(ClientResponse::ExpirySet {
            changed: e.changed,
            mod_revision: e.mod_revision,
        }),
        Some(R::Error(e)) => Err(super::errors::from_code(
            &e.code,
            &e.message,
            super::errors::ErrorDetails {
                current_mod_revision: e.current_mod_revision,
                partition: e.partition,
                len: e.len,
                max: e.max,
            },
        )),
        None => Err(ClientError::Internal(
            "forward response without a result".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn requests_survive_the_forward_rpc() {
        let reqs = [
            ClientRequest::Get {
                key: Bytes::from_static(b"k"),
                consistency: Consistency::Lease,
            },
            ClientRequest::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                precondition: Precondition::ModRevision(9),
                return_previous: true,
                expiry: Expiry::Clear,
            },
            ClientRequest::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                precondition: Precondition::None,
                return_previous: false,
                expiry: Expiry::AfterMs(1_500),
            },
            ClientRequest::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                precondition: Precondition::MustExist,
                return_previous: false,
                expiry: Expiry::Keep,
            },
            ClientRequest::Expire {
                key: Bytes::from_static(b"k"),
                expiry: Expiry::AtUnixMs(1_800_000_000_000),
            },
            ClientRequest::Expire {
                key: Bytes::from_static(b"k"),
                expiry: Expiry::Clear,
            },
            ClientRequest::Delete {
                key: Bytes::from_static(b"k"),
                precondition: Precondition::MustExist,
                return_previous: true,
            },
            ClientRequest::Increment {
                key: Bytes::from_static(b"n"),
                delta: i64::MIN,
            },
            ClientRequest::Append {
                key: Bytes::from_static(b"s"),
                suffix: Bytes::from_static(b"tail"),
            },
            ClientRequest::CountKeys {
                key: Bytes::from_static(b"{p7}"),
                consistency: Consistency::Lease,
            },
            ClientRequest::Scan {
                key: Bytes::from_static(b"{p7}"),
                start: Bytes::from_static(b"a/"),
                end: Some(Bytes::from_static(b"a0")),
                limit: 100,
                keys_only: true,
                consistency: Consistency::Stale,
            },
            ClientRequest::Scan {
                key: Bytes::from_static(b"{p7}"),
                start: Bytes::new(),
                end: None,
                limit: 1,
                keys_only: false,
                consistency: Consistency::Linearizable,
            },
            ClientRequest::PutAll {
                pairs: vec![
                    (Bytes::from_static(b"{u}a"), Bytes::from_static(b"1")),
                    (Bytes::from_static(b"{u}b"), Bytes::new()),
                ],
            },
        ];
        for r in reqs {
            let back = forwarded_request(forward_request(&r, 1, 1)).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn results_survive_the_forward_rpc() {
        let kv = KeyValue {
            key: Bytes::from_static(b"a/1"),
            value: Bytes::from_static(b"v"),
            version: 1,
            create_revision: 4,
            mod_revision: 4,
            expires_at: Some(1_800_000_000_000),
        };
        let results = [
            Ok(ClientResponse::Value(None)),
            Ok(ClientResponse::Put {
                version: 2,
                mod_revision: 10,
                created: false,
                previous: None,
            }),
            Ok(ClientResponse::Put {
                version: 3,
                mod_revision: 12,
                created: false,
                previous: Some(KeyValue {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"old"),
                    version: 2,
                    create_revision: 1,
                    mod_revision: 10,
                    expires_at: None,
                }),
            }),
            Ok(ClientResponse::ExpirySet {
                changed: true,
                mod_revision: 16,
            }),
            Err(ClientError::InvalidExpiry(
                "a time to live must be at least 1 ms".into(),
            )),
            Err(ClientError::NoWallClock),
            Ok(ClientResponse::Deleted {
                revision: 11,
                previous: None,
            }),
            Ok(ClientResponse::Incremented {
                value: -7,
                version: 4,
                mod_revision: 13,
            }),
            Ok(ClientResponse::Appended {
                len: 9,
                version: 5,
                mod_revision: 14,
            }),
            Ok(ClientResponse::Count(1234)),
            Ok(ClientResponse::Scanned {
                kvs: vec![kv.clone(), kv.clone()],
                more: true,
            }),
            Ok(ClientResponse::Scanned {
                kvs: vec![],
                more: false,
            }),
            Err(ClientError::InvalidScanLimit {
                limit: 0,
                max: 10_000,
            }),
            Ok(ClientResponse::PutAll {
                mod_revision: 15,
                created: 2,
            }),
            Err(ClientError::NotAnInteger),
            Err(ClientError::CrossPartition),
            Err(ClientError::WriteTooLarge {
                len: 1_100_000,
                max: 1_052_672,
            }),
            Err(ClientError::IncrementOverflow),
            Err(ClientError::PreconditionFailed {
                current_mod_revision: Some(3),
            }),
            Err(ClientError::OutcomeUnknown {
                cause: ringkv_core::node::UnknownCause::ConnectionLost,
            }),
        ];
        for r in results {
            assert_eq!(forwarded_response(forward_response(&r)), r);
        }
    }

    #[test]
    fn unknown_consistency_is_an_error_not_a_default() {
        assert!(consistency_from_proto(99).is_err());
        assert_eq!(consistency_from_proto(0), Ok(Consistency::Linearizable));
    }
}
