"""The broker: AWS-compatible SSM, IAM and STS APIs with SigV4 and enforced IAM policies."""
