"""The deploy, one module per component. Each has ``wants(ctx)`` (what the host must hold,
computed locally) and ``deploy(ctx, wants)`` (the operations, in the order a host lives them)."""
