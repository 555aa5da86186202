"""The resource: the spec/status models, the CRD generated from them, the policy reference."""
