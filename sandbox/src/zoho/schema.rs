//! The modules and fields the emulated org has: Zoho's standard layouts, trimmed to
//! what a sync engine touches, plus one custom multi-select picklist (`Interests`) on
//! Contacts. Field API names and picklist values are Zoho's defaults.

/// A CRM module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    Contacts,
    Accounts,
    Deals,
    Calls,
    Leads,
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Text,
    TextArea,
    Email,
    Phone,
    /// Values, and whether others are refused.
    Picklist(&'static [&'static str], bool),
    MultiSelect(&'static [&'static str]),
    Integer,
    Currency,
    Boolean,
    Date,
    DateTime,
    Lookup(Module),
    /// A lookup whose module is named by the sibling `$se_module` (Calls' `What_Id`).
    MultiModuleLookup(&'static [Module]),
    /// `mm:ss`.
    Duration,
    /// Read-only, derived from other fields (`Full_Name`, `Call_Duration_in_seconds`).
    Computed,
}

/// A field of a module's layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub mandatory: bool,
}

/// A column of a record: the system fields every module has, or a layout field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Id,
    Owner,
    CreatedTime,
    ModifiedTime,
    CreatedBy,
    ModifiedBy,
    Field(usize),
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        mandatory: false,
    }
}

const fn required(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        mandatory: true,
    }
}

pub const LEAD_SOURCES: &[&str] = &[
    "-None-",
    "Advertisement",
    "Cold Call",
    "Employee Referral",
    "External Referral",
    "Online Store",
    "Partner",
    "Public Relations",
    "Sales Email Alias",
    "Seminar Partner",
    "Internal Seminar",
    "Trade Show",
    "Web Download",
    "Web Research",
    "Chat",
];
pub const INDUSTRIES: &[&str] = &[
    "-None-",
    "Communications",
    "Consulting",
    "Education",
    "Financial Services",
    "Government",
    "Healthcare",
    "Logistics",
    "Manufacturing",
    "Retail",
    "Technology",
];
pub const ACCOUNT_TYPES: &[&str] = &[
    "-None-",
    "Analyst",
    "Competitor",
    "Customer",
    "Distributor",
    "Integrator",
    "Investor",
    "Partner",
    "Press",
    "Prospect",
    "Reseller",
    "Supplier",
    "Vendor",
    "Other",
];
/// Stages with the probability Zoho fills in when a stage is set without one.
pub const STAGES: &[(&str, i64)] = &[
    ("Qualification", 10),
    ("Needs Analysis", 20),
    ("Value Proposition", 40),
    ("Identify Decision Makers", 60),
    ("Proposal/Price Quote", 75),
    ("Negotiation/Review", 90),
    ("Closed Won", 100),
    ("Closed Lost", 0),
    ("Closed Lost to Competition", 0),
];
const STAGE_NAMES: &[&str] = &[
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Identify Decision Makers",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed Lost to Competition",
];
pub const DEAL_TYPES: &[&str] = &["-None-", "Existing Business", "New Business"];
pub const CALL_TYPES: &[&str] = &["Outbound", "Inbound", "Missed"];
pub const CALL_PURPOSES: &[&str] = &[
    "-None-",
    "Prospecting",
    "Administrative",
    "Negotiation",
    "Demo",
    "Project",
    "Desk",
];
pub const LEAD_STATUSES: &[&str] = &[
    "-None-",
    "Attempted to Contact",
    "Contact in Future",
    "Contacted",
    "Junk Lead",
    "Lost Lead",
    "Not Contacted",
    "Pre-Qualified",
    "Not Qualified",
];
pub const INTERESTS: &[&str] = &[
    "Analytics",
    "Automation",
    "Integrations",
    "Mobile",
    "Security",
    "Support",
];

const CONTACTS: &[Field] = &[
    f("First_Name", Kind::Text),
    required("Last_Name", Kind::Text),
    f("Full_Name", Kind::Computed),
    f("Email", Kind::Email),
    f("Secondary_Email", Kind::Email),
    f("Phone", Kind::Phone),
    f("Mobile", Kind::Phone),
    f("Title", Kind::Text),
    f("Department", Kind::Text),
    f("Lead_Source", Kind::Picklist(LEAD_SOURCES, false)),
    f("Account_Name", Kind::Lookup(Module::Accounts)),
    f("Mailing_City", Kind::Text),
    f("Mailing_Country", Kind::Text),
    f("Date_of_Birth", Kind::Date),
    f("Email_Opt_Out", Kind::Boolean),
    f("Interests", Kind::MultiSelect(INTERESTS)),
    f("Description", Kind::TextArea),
];
const ACCOUNTS: &[Field] = &[
    required("Account_Name", Kind::Text),
    f("Website", Kind::Text),
    f("Phone", Kind::Phone),
    f("Industry", Kind::Picklist(INDUSTRIES, false)),
    f("Account_Type", Kind::Picklist(ACCOUNT_TYPES, false)),
    f("Employees", Kind::Integer),
    f("Annual_Revenue", Kind::Currency),
    f("Billing_City", Kind::Text),
    f("Billing_Country", Kind::Text),
    f("Description", Kind::TextArea),
];
const DEALS: &[Field] = &[
    required("Deal_Name", Kind::Text),
    f("Amount", Kind::Currency),
    required("Stage", Kind::Picklist(STAGE_NAMES, true)),
    f("Probability", Kind::Integer),
    required("Closing_Date", Kind::Date),
    f("Account_Name", Kind::Lookup(Module::Accounts)),
    f("Contact_Name", Kind::Lookup(Module::Contacts)),
    f("Type", Kind::Picklist(DEAL_TYPES, false)),
    f("Lead_Source", Kind::Picklist(LEAD_SOURCES, false)),
    f("Next_Step", Kind::Text),
    f("Description", Kind::TextArea),
];
const CALLS: &[Field] = &[
    required("Subject", Kind::Text),
    required("Call_Type", Kind::Picklist(CALL_TYPES, true)),
    required("Call_Start_Time", Kind::DateTime),
    f("Call_Duration", Kind::Duration),
    f("Call_Duration_in_seconds", Kind::Computed),
    f("Call_Purpose", Kind::Picklist(CALL_PURPOSES, false)),
    f("Call_Result", Kind::Text),
    f("Description", Kind::TextArea),
    f("Who_Id", Kind::Lookup(Module::Contacts)),
    f(
        "What_Id",
        Kind::MultiModuleLookup(&[Module::Accounts, Module::Deals, Module::Leads]),
    ),
];
const LEADS: &[Field] = &[
    f("First_Name", Kind::Text),
    required("Last_Name", Kind::Text),
    f("Full_Name", Kind::Computed),
    required("Company", Kind::Text),
    f("Email", Kind::Email),
    f("Phone", Kind::Phone),
    f("Mobile", Kind::Phone),
    f("Title", Kind::Text),
    f("Lead_Source", Kind::Picklist(LEAD_SOURCES, false)),
    f("Lead_Status", Kind::Picklist(LEAD_STATUSES, false)),
    f("Industry", Kind::Picklist(INDUSTRIES, false)),
    f("City", Kind::Text),
    f("Description", Kind::TextArea),
];

impl Module {
    pub const ALL: [Module; 5] = [
        Module::Contacts,
        Module::Accounts,
        Module::Deals,
        Module::Calls,
        Module::Leads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Module::Contacts => "Contacts",
            Module::Accounts => "Accounts",
            Module::Deals => "Deals",
            Module::Calls => "Calls",
            Module::Leads => "Leads",
        }
    }

    /// Module API names are matched without regard to case, as Zoho does in URLs.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Zoho's module id, as `resource_id` in notification answers.
    pub fn resource_id(self, id_prefix: u64) -> String {
        (id_prefix + 125 + 2 * self.index() as u64).to_string()
    }

    pub fn fields(self) -> &'static [Field] {
        match self {
            Module::Contacts => CONTACTS,
            Module::Accounts => ACCOUNTS,
            Module::Deals => DEALS,
            Module::Calls => CALLS,
            Module::Leads => LEADS,
        }
    }

    pub fn field_index(self, name: &str) -> Option<usize> {
        self.fields().iter().position(|f| f.name == name)
    }

    pub fn field(self, index: usize) -> &'static Field {
        &self.fields()[index]
    }

    /// A column by API name (exact case, as Zoho matches field API names).
    pub fn column(self, name: &str) -> Option<Column> {
        Some(match name {
            "id" => Column::Id,
            "Owner" => Column::Owner,
            "Created_Time" => Column::CreatedTime,
            "Modified_Time" => Column::ModifiedTime,
            "Created_By" => Column::CreatedBy,
            "Modified_By" => Column::ModifiedBy,
            other => Column::Field(self.field_index(other)?),
        })
    }

    pub fn column_name(self, column: Column) -> &'static str {
        match column {
            Column::Id => "id",
            Column::Owner => "Owner",
            Column::CreatedTime => "Created_Time",
            Column::ModifiedTime => "Modified_Time",
            Column::CreatedBy => "Created_By",
            Column::ModifiedBy => "Modified_By",
            Column::Field(i) => self.field(i).name,
        }
    }

    /// Every column, system fields first.
    pub fn all_columns(self) -> Vec<Column> {
        let mut columns = vec![
            Column::Id,
            Column::Owner,
            Column::CreatedTime,
            Column::ModifiedTime,
            Column::CreatedBy,
            Column::ModifiedBy,
        ];
        columns.extend((0..self.fields().len()).map(Column::Field));
        columns
    }

    /// The field shown as a record's name in lookups and the recycle bin.
    pub fn display_field(self) -> &'static str {
        match self {
            Module::Contacts | Module::Leads => "Full_Name",
            Module::Accounts => "Account_Name",
            Module::Deals => "Deal_Name",
            Module::Calls => "Subject",
        }
    }

    /// Zoho's system-defined duplicate check fields, used by upsert when the request
    /// names none.
    pub fn default_duplicate_check(self) -> &'static [&'static str] {
        match self {
            Module::Contacts | Module::Leads => &["Email"],
            Module::Accounts => &["Account_Name"],
            Module::Deals => &["Deal_Name"],
            Module::Calls => &[],
        }
    }

    /// The scope name of the module (`ZohoCRM.modules.contacts.READ`).
    pub fn scope_name(self) -> String {
        self.name().to_ascii_lowercase()
    }
}

/// The probability Zoho sets for a stage.
pub fn stage_probability(stage: &str) -> Option<i64> {
    STAGES.iter().find(|(s, _)| *s == stage).map(|(_, p)| *p)
}
