"""The AWS front door: SigV4, who is calling, one call's context and its pipeline."""
