"""The service layer: lifecycle, policy and deadlines, independent of HTTP."""
