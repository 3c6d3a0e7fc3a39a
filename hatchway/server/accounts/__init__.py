"""The account's IAM entities in the store, AWS-managed policies, the first start."""
