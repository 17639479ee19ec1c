//! The Odoo emulator.
