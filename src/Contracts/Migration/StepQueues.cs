namespace SEmigrate.Contracts.Migration;

/// <summary>Where a host's worker takes its steps when the embedded engine runs a migration (Temporal
/// uses task queues of the same names).</summary>
public static class StepQueues
{
    public static string Host(string host) => $"semigrate-host-{host}";

    /// <summary>A host process's MassTransit bus endpoint and its cancel endpoint: named under the host's
    /// step queue, so the host's broker user owns them (deploy/services.sh host-user); one per process.</summary>
    public static string BusEndpoint(string host) => $"{Host(host)}.bus-{Guid.NewGuid():N}";

    public static string CancelEndpoint(string host) => $"{Host(host)}.cancel-{Guid.NewGuid():N}";

    /// <summary>The host's own exchanges that others' messages reach it by (bound by an orchestrator, from
    /// CancelSteps' exchange) and its own messages leave by (bound by an orchestrator to where it
    /// listens): a host's broker user declares, sends to and reads only names of its own.</summary>
    public static string CancelEntry(string host) => $"{Host(host)}.cancel-in";

    public static string ProgressExit(string host) => $"{Host(host)}.progress";

    /// <summary>Where a host sends the events of an audit queue (<see cref="Audit.AuditRoute"/>).</summary>
    public static string AuditExit(string host, string auditQueue) => $"{Host(host)}.audit.{auditQueue}";

    /// <summary>An orchestrator process's bus endpoint, exclusive to its process. Hosts have no right to it at
    /// all: their answers to its steps come by RabbitMQ's direct reply-to.</summary>
    public static string OrchestratorBusEndpoint() => $"semigrate-orchestrator.bus-{Guid.NewGuid():N}";

    /// <summary>An orchestrator process's endpoint for transfer progress, bound from each host's progress exchange.</summary>
    public static string OrchestratorProgressEndpoint() => $"semigrate-orchestrator.progress-{Guid.NewGuid():N}";
}

/// <summary>A step that must not be retried (bad input, wrong host, a key that does not open): the
/// embedded engine's answer to a request, where Temporal has non-retryable application failures.
/// <paramref name="Kind"/>: the failure's type when the procedure acts on it (see <see cref="StepErrors"/>).</summary>
public sealed record StepRefused(string Reason, string? Kind = null);

/// <summary>Failure types the procedure acts on (Temporal's ApplicationFailure error type, the embedded
/// engine's StepRefused kind). Values are wire format.</summary>
public static class StepErrors
{
    /// <summary>A destination no longer holds the VM's pages (its memory server restarted): its share must go again.</summary>
    public const string DestinationLost = "DestinationLost";

    /// <summary>The step stopped because the migration was cancelled (embedded engine; Temporal has its own).</summary>
    public const string Cancelled = "Cancelled";

    /// <summary>A host refused the step: the migration's signed request does not allow it (forged, altered,
    /// replayed or expired); recorded as a security event (StepDenied).</summary>
    public const string Denied = "StepDenied";

    /// <summary>No worker of the host took the step (none consumes its queue, or it stopped answering):
    /// where the step's failure undid the migration, another host may be tried in its place.</summary>
    public const string Unreachable = "Unreachable";
}

/// <summary>The embedded engine cancels a migration: every worker stops the migration's forward steps it
/// runs (not its releases), and answers each as cancelled; a switch-over past its point of no return
/// finishes.</summary>
public sealed record CancelSteps(Guid MigrationId, string Reason);
