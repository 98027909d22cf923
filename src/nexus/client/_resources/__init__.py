"""One module per API resource: its model(s) and its sync + async collections."""
