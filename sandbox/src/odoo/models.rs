//! The models the emulator serves, with Odoo's field names, types, labels and
//! default orders. Every model also has Odoo's magic fields: `id`, `display_name`,
//! `create_date`, `create_uid`, `write_date`, `write_uid`.
//!
//! Not emulated: one2many fields (`child_ids`, `activity_ids`, `message_ids`), and
//! the hundreds of other fields a real database has.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

/// A field's type, as `fields_get` names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Integer,
    Float,
    Monetary,
    Char,
    Html,
    Boolean,
    Selection(&'static [(&'static str, &'static str)]),
    /// The related model.
    Many2one(&'static str),
    /// An integer id of a record whose model is named by another field.
    Reference(&'static str),
    Datetime,
    Date,
}

impl Kind {
    pub(crate) fn type_name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Float => "float",
            Kind::Monetary => "monetary",
            Kind::Char => "char",
            Kind::Html => "html",
            Kind::Boolean => "boolean",
            Kind::Selection(_) => "selection",
            Kind::Many2one(_) => "many2one",
            Kind::Reference(_) => "many2one_reference",
            Kind::Datetime => "datetime",
            Kind::Date => "date",
        }
    }
}

/// A default value for `create`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Initial {
    Nothing,
    Bool(bool),
    Text(&'static str),
    Id(i64),
    CurrentUser,
    Today,
    Now,
}

#[derive(Debug)]
pub(crate) struct Field {
    pub name: &'static str,
    pub string: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub readonly: bool,
    /// Computed on read, never stored (`display_name`, `res_name`, activity `state`).
    pub computed: bool,
    pub default: Initial,
}

impl Field {
    fn new(name: &'static str, string: &'static str, kind: Kind) -> Self {
        Self {
            name,
            string,
            kind,
            required: false,
            readonly: false,
            computed: false,
            default: Initial::Nothing,
        }
    }

    fn required(mut self) -> Self {
        self.required = true;
        self
    }

    fn readonly(mut self) -> Self {
        self.readonly = true;
        self
    }

    fn computed(mut self) -> Self {
        self.computed = true;
        self.readonly = true;
        self
    }

    fn default(mut self, d: Initial) -> Self {
        self.default = d;
        self
    }

    /// The magic fields the ORM maintains; writes to them are ignored.
    pub(crate) fn is_magic(&self) -> bool {
        matches!(
            self.name,
            "id" | "display_name" | "create_date" | "create_uid" | "write_date" | "write_uid"
        )
    }

    /// This field's `fields_get` description.
    pub(crate) fn describe(&self) -> Value {
        let mut d = Map::new();
        d.insert("name".into(), json!(self.name));
        d.insert("string".into(), json!(self.string));
        d.insert("type".into(), json!(self.kind.type_name()));
        d.insert("required".into(), json!(self.required));
        d.insert("readonly".into(), json!(self.readonly));
        d.insert("store".into(), json!(!self.computed));
        d.insert("searchable".into(), json!(true));
        d.insert("sortable".into(), json!(!self.computed));
        d.insert("manual".into(), json!(false));
        d.insert("company_dependent".into(), json!(false));
        match self.kind {
            Kind::Many2one(rel) => {
                d.insert("relation".into(), json!(rel));
                d.insert("domain".into(), json!([]));
                d.insert("context".into(), json!({}));
            }
            Kind::Reference(model_field) => {
                d.insert("model_field".into(), json!(model_field));
            }
            Kind::Selection(options) => {
                let opts: Vec<Value> = options.iter().map(|(k, v)| json!([k, v])).collect();
                d.insert("selection".into(), Value::Array(opts));
            }
            Kind::Char => {
                d.insert("size".into(), json!(null));
                d.insert("trim".into(), json!(true));
            }
            Kind::Monetary => {
                d.insert("currency_field".into(), json!("company_currency"));
            }
            _ => {}
        }
        Value::Object(d)
    }
}

#[derive(Debug)]
pub(crate) struct Model {
    pub name: &'static str,
    pub description: &'static str,
    /// `_order`.
    pub order: &'static str,
    pub fields: Vec<Field>,
    index: HashMap<&'static str, usize>,
    /// Inherits `mail.thread`: has `message_post`, and its activities and messages go
    /// with it on `unlink`.
    pub thread: bool,
    /// Whether RPC may create, write and unlink (the emulator keeps users, models and
    /// subtypes read-only).
    pub editable: bool,
    /// The Odoo major version this definition belongs to.
    pub major: u32,
}

impl Model {
    fn new(
        name: &'static str,
        description: &'static str,
        order: &'static str,
        fields: Vec<Field>,
    ) -> Self {
        let mut all = vec![Field::new("id", "ID", Kind::Integer).readonly()];
        all.push(Field::new("display_name", "Display Name", Kind::Char).computed());
        all.extend(fields);
        all.push(Field::new("create_date", "Created on", Kind::Datetime).readonly());
        all.push(Field::new("create_uid", "Created by", Kind::Many2one("res.users")).readonly());
        all.push(Field::new("write_date", "Last Updated on", Kind::Datetime).readonly());
        all.push(
            Field::new("write_uid", "Last Updated by", Kind::Many2one("res.users")).readonly(),
        );
        let index = all.iter().enumerate().map(|(i, f)| (f.name, i)).collect();
        Self {
            name,
            description,
            order,
            fields: all,
            index,
            thread: false,
            editable: true,
            major: 0,
        }
    }

    fn thread(mut self) -> Self {
        self.thread = true;
        self
    }

    fn read_only(mut self) -> Self {
        self.editable = false;
        self
    }

    pub(crate) fn idx(&self, field: &str) -> Option<usize> {
        self.index.get(field).copied()
    }

    /// The index of a field every model has.
    pub(crate) fn magic(&self, name: &str) -> usize {
        self.idx(name).expect("every model has the magic fields")
    }

    pub(crate) fn has_active(&self) -> bool {
        self.index.contains_key("active")
    }
}

pub(crate) const WON_STAGE: i64 = 4;

const PARTNER_TYPES: &[(&str, &str)] = &[
    ("contact", "Contact"),
    ("invoice", "Invoice Address"),
    ("delivery", "Delivery Address"),
    ("other", "Other Address"),
];
const LEAD_TYPES: &[(&str, &str)] = &[("lead", "Lead"), ("opportunity", "Opportunity")];
const PRIORITIES: &[(&str, &str)] = &[
    ("0", "Low"),
    ("1", "Medium"),
    ("2", "High"),
    ("3", "Very High"),
];
const ACTIVITY_STATES: &[(&str, &str)] = &[
    ("overdue", "Overdue"),
    ("today", "Today"),
    ("planned", "Planned"),
];
const MESSAGE_TYPES: &[(&str, &str)] = &[
    ("email", "Incoming Email"),
    ("comment", "Comment"),
    ("email_outgoing", "Outgoing Email"),
    ("notification", "System notification"),
    ("auto_comment", "Automated Targeted Notification"),
    ("user_notification", "User Specific Notification"),
];

/// The models of Odoo `major`. `mobile` left `res.partner` in 18.2: Odoo 19 answers
/// `Invalid field` for it.
fn all_models(major: u32) -> Vec<Model> {
    use Kind::*;
    let f = Field::new;
    let mut models = vec![
        Model::new(
            "res.partner",
            "Contact",
            "display_name ASC, id DESC",
            vec![
                f("name", "Name", Char),
                f("type", "Address Type", Selection(PARTNER_TYPES))
                    .default(Initial::Text("contact")),
                f("is_company", "Is a Company", Boolean).default(Initial::Bool(false)),
                f("parent_id", "Related Company", Many2one("res.partner")),
                f("function", "Job Position", Char),
                f("email", "Email", Char),
                f("phone", "Phone", Char),
                f("website", "Website Link", Char),
                f("city", "City", Char),
                f("comment", "Notes", Html),
                f("active", "Active", Boolean).default(Initial::Bool(true)),
            ],
        )
        .thread(),
        Model::new(
            "res.users",
            "User",
            "name, login",
            vec![
                f("name", "Name", Char),
                f("login", "Login", Char).required(),
                f("partner_id", "Related Partner", Many2one("res.partner")).required(),
                f("active", "Active", Boolean).default(Initial::Bool(true)),
            ],
        )
        .read_only(),
        Model::new(
            "crm.stage",
            "CRM Stages",
            "sequence, name, id",
            vec![
                f("name", "Stage Name", Char).required(),
                f("sequence", "Sequence", Integer),
                f("is_won", "Is Won Stage?", Boolean).default(Initial::Bool(false)),
                f("fold", "Folded in Pipeline", Boolean).default(Initial::Bool(false)),
            ],
        ),
        Model::new(
            "crm.lead",
            "Lead/Opportunity",
            "priority desc, id desc",
            vec![
                f("name", "Opportunity", Char).required(),
                f("type", "Type", Selection(LEAD_TYPES))
                    .required()
                    .default(Initial::Text("opportunity")),
                f("priority", "Priority", Selection(PRIORITIES)).default(Initial::Text("0")),
                f("active", "Active", Boolean).default(Initial::Bool(true)),
                f("stage_id", "Stage", Many2one("crm.stage")).default(Initial::Id(1)),
                f("expected_revenue", "Expected Revenue", Monetary),
                f("probability", "Probability", Float),
                f("partner_id", "Customer", Many2one("res.partner")),
                f("contact_name", "Contact Name", Char),
                f("partner_name", "Company Name", Char),
                f("email_from", "Email", Char),
                f("phone", "Phone", Char),
                f("user_id", "Salesperson", Many2one("res.users")).default(Initial::CurrentUser),
                f("date_deadline", "Expected Closing", Date),
                f("description", "Notes", Html),
            ],
        )
        .thread(),
        Model::new(
            "mail.activity.type",
            "Activity Type",
            "sequence, id",
            vec![
                f("name", "Name", Char).required(),
                f("sequence", "Sequence", Integer),
            ],
        ),
        Model::new(
            "mail.activity",
            "Activity",
            "date_deadline ASC, id ASC",
            vec![
                f("res_model_id", "Document Model", Many2one("ir.model")).required(),
                f("res_model", "Related Document Model", Char).readonly(),
                f("res_id", "Related Document ID", Reference("res_model")).required(),
                f("res_name", "Document Name", Char).computed(),
                f(
                    "activity_type_id",
                    "Activity Type",
                    Many2one("mail.activity.type"),
                ),
                f("summary", "Summary", Char),
                f("note", "Note", Html),
                f("date_deadline", "Due Date", Date)
                    .required()
                    .default(Initial::Today),
                f("user_id", "Assigned to", Many2one("res.users")).default(Initial::CurrentUser),
                f("state", "State", Selection(ACTIVITY_STATES)).computed(),
            ],
        ),
        Model::new(
            "mail.message",
            "Message",
            "id desc",
            vec![
                f("subject", "Subject", Char),
                f("body", "Contents", Html),
                f("date", "Date", Datetime).default(Initial::Now),
                f("model", "Related Document Model", Char),
                f("res_id", "Related Document ID", Reference("model")),
                f("record_name", "Message Record Name", Char),
                f("message_type", "Type", Selection(MESSAGE_TYPES))
                    .required()
                    .default(Initial::Text("comment")),
                f("subtype_id", "Subtype", Many2one("mail.message.subtype")),
                f("author_id", "Author", Many2one("res.partner")),
            ],
        ),
        Model::new(
            "mail.message.subtype",
            "Message subtypes",
            "sequence, id",
            vec![
                f("name", "Message Type", Char).required(),
                f("internal", "Internal Only", Boolean).default(Initial::Bool(false)),
                f("sequence", "Sequence", Integer),
            ],
        )
        .read_only(),
        Model::new(
            "ir.model",
            "Models",
            "model",
            vec![
                f("name", "Model Description", Char).required(),
                f("model", "Model", Char).required(),
            ],
        )
        .read_only(),
    ];
    for m in &mut models {
        m.major = major;
        if major < 18 && m.name == "res.partner" {
            let at = m.magic("phone") + 1;
            m.fields.insert(at, f("mobile", "Mobile", Char));
            m.index = m
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name, i))
                .collect();
        }
    }
    models
}

static V17: LazyLock<Vec<Model>> = LazyLock::new(|| all_models(17));
static V19: LazyLock<Vec<Model>> = LazyLock::new(|| all_models(19));

/// Every model of Odoo `major` (17 or 19).
pub(crate) fn registry(major: u32) -> &'static [Model] {
    if major < 18 {
        &V17
    } else {
        &V19
    }
}

/// A model of Odoo `major`.
pub(crate) fn model_in(major: u32, name: &str) -> Option<&'static Model> {
    registry(major).iter().find(|m| m.name == name)
}

/// `ir.model` ids of the models, as seeded.
pub(crate) fn ir_model_id(name: &str) -> Option<i64> {
    V19.iter()
        .position(|m| m.name == name)
        .map(|i| 80 + i as i64)
}

/// `mail.message.subtype` records: (id, xmlid, name, internal).
pub(crate) const SUBTYPES: &[(i64, &str, &str, bool)] = &[
    (1, "mail.mt_comment", "Discussions", false),
    (2, "mail.mt_note", "Note", true),
    (3, "mail.mt_activities", "Activities", true),
];

/// `crm.stage` records: (id, name, sequence, is_won).
pub(crate) const STAGES: &[(i64, &str, i64, bool)] = &[
    (1, "New", 1, false),
    (2, "Qualified", 2, false),
    (3, "Proposition", 3, false),
    (WON_STAGE, "Won", 70, true),
];

/// `mail.activity.type` records: (id, name).
pub(crate) const ACTIVITY_TYPES: &[(i64, &str)] =
    &[(1, "Email"), (2, "Call"), (3, "Meeting"), (4, "To-Do")];
