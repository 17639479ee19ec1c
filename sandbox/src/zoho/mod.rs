//! The Zoho CRM emulator.
