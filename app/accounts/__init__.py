"""Accounts: API keys, who a request is (its principal), quotas, request rates, job size limits, the audit log."""
