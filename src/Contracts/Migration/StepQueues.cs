namespace SEmigrate.Contracts.Migration;

/// <summary>Where a host's worker takes its steps when the embedded engine runs a migration (Temporal
/// uses task queues of the same names).</summary>
public static class StepQueues
{
    public static string Host(string host) => $"semigrate-host-{host}";
}

/// <summary>A step that must not be retried (bad input, wrong host, a key that does not open): the
/// embedded engine's answer to a request, where Temporal has non-retryable application failures.</summary>
public sealed record StepRefused(string Reason);
