using Temporalio.Activities;

namespace SEmigrate.Activities;

/// <summary>The running step's cancellation: Temporal's when it runs as an activity, none when the
/// embedded engine calls it (its requests time out on the engine's side).</summary>
internal static class StepToken
{
    public static CancellationToken Current => ActivityExecutionContext.HasCurrent ? ActivityExecutionContext.Current.CancellationToken : CancellationToken.None;
}
