namespace SEmigrate.Workflows;

/// <summary>How a step is retried and timed: both engines use the same numbers. Heartbeat is set for
/// long steps that report progress (a transfer) or beat to learn of a cancel (the switch-over): no
/// heartbeat for that long means the attempt is dead.</summary>
public sealed record StepPolicy(int MaxAttempts, TimeSpan Timeout, TimeSpan Backoff, TimeSpan? Heartbeat = null);

/// <summary>Per-step policies. Starting paging servers and releasing are quick and fail fast (a host
/// that does not answer is unreachable); a transfer may run long but must heartbeat.</summary>
public sealed record StepPolicies(StepPolicy Introspect, StepPolicy Quick, StepPolicy Transfer, StepPolicy SwitchOver)
{
    public static readonly StepPolicies Default = new(
        Introspect: new StepPolicy(3, TimeSpan.FromMinutes(10), TimeSpan.FromSeconds(1)),
        Quick: new StepPolicy(3, TimeSpan.FromSeconds(20), TimeSpan.FromSeconds(1)),
        Transfer: new StepPolicy(10, TimeSpan.FromHours(6), TimeSpan.FromSeconds(1), Heartbeat: TimeSpan.FromSeconds(15)),
        SwitchOver: new StepPolicy(3, TimeSpan.FromMinutes(30), TimeSpan.FromSeconds(1), Heartbeat: TimeSpan.FromSeconds(30)));
}
