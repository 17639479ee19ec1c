//! Odoo: an API key in place of the password, JSON-RPC (`/jsonrpc`) by default and
//! JSON-2 (`/json/2/<model>/<method>`) where the server offers it (`client`), and the
//! mapping of partners, leads and activities onto the canonical model (`mapping`).

pub mod client;
pub mod mapping;

/// The models crmsync polls, with the fields it reads.
pub const MODELS: [&str; 3] = ["res.partner", "crm.lead", "mail.activity"];

/// The fields read of each polled model.
pub fn fields_of(model: &str) -> &'static [&'static str] {
    match model {
        "res.partner" => &[
            "name",
            "is_company",
            "parent_id",
            "function",
            "email",
            "phone",
            "website",
            "city",
            "active",
            "write_date",
            "create_date",
        ],
        "crm.lead" => &[
            "name",
            "type",
            "active",
            "stage_id",
            "expected_revenue",
            "probability",
            "partner_id",
            "contact_name",
            "partner_name",
            "email_from",
            "phone",
            "user_id",
            "date_deadline",
            "write_date",
            "create_date",
        ],
        "mail.activity" => &[
            "res_model",
            "res_id",
            "summary",
            "date_deadline",
            "user_id",
            "activity_type_id",
            "write_date",
            "create_date",
        ],
        _ => &["write_date"],
    }
}
