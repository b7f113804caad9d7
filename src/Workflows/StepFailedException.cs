namespace SEmigrate.Workflows;

/// <summary>The embedded engine's failed step: refused, or out of attempts; its message is the reason
/// recorded, <see cref="Kind"/> the failure's type where the procedure acts on it (Contracts' StepErrors;
/// on Temporal, the ApplicationFailure's error type), <see cref="Host"/> the host it was for where the
/// procedure acts on that (a host that is unreachable: StepErrors.Unreachable).</summary>
public sealed class StepFailedException(string message, string? kind = null, string? host = null) : Exception(message)
{
    public string? Kind => kind;

    public string? Host => host;
}
