//! Zoho CRM: OAuth per data centre (`oauth`), the v8 records API with credits and
//! concurrency honoured (`client`), notification callbacks (`notification`), and the
//! mapping of records onto the canonical model (`mapping`, `snapshot`).

pub mod client;
pub mod mapping;
pub mod notification;
pub mod oauth;
pub mod snapshot;

/// The modules crmsync keeps in step, with the object type each is projected as.
pub const MODULES: [(&str, &str); 3] = [
    ("Contacts", "contact"),
    ("Accounts", "company"),
    ("Deals", "deal"),
];

/// The modules the poller reads: the synced ones and Calls. A notification can be
/// lost (Zoho does not retry one), and a call logged, edited or deleted in Zoho then
/// reaches crmsync only this way. Calls are not backfilled: the first poll reads them.
pub const POLLED: [(&str, &str); 4] = [MODULES[0], MODULES[1], MODULES[2], ("Calls", "activity")];

/// The modules a notification channel watches: the synced ones and Calls (the call
/// outcomes crmsync logs, whose CRM edits are conflicts).
pub const WATCHED: [&str; 4] = ["Contacts", "Accounts", "Deals", "Calls"];

/// The object type a Zoho module is stored as (`Calls` are activities).
pub fn object_of(module: &str) -> Option<&'static str> {
    match module {
        "Calls" => Some("activity"),
        other => MODULES
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(other))
            .map(|(_, o)| *o),
    }
}

/// The module an object type comes from.
pub fn module_of(object: &str) -> Option<&'static str> {
    match object {
        "activity" => Some("Calls"),
        other => MODULES.iter().find(|(_, o)| *o == other).map(|(m, _)| *m),
    }
}
