namespace SEmigrate.Workflows;

/// <summary>The embedded engine's failed step: refused, or out of attempts; its message is the reason
/// recorded, <see cref="Kind"/> the failure's type where the procedure acts on it (Contracts' StepErrors;
/// on Temporal, the ApplicationFailure's error type).</summary>
public sealed class StepFailedException(string message, string? kind = null) : Exception(message)
{
    public string? Kind => kind;
}
