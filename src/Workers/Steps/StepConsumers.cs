using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using SEmigrate.Activities;
using SEmigrate.Contracts.Migration;
using Temporalio.Exceptions;

namespace SEmigrate.Workers.Steps;

/// <summary>The embedded engine's steps arrive as MassTransit requests on the host's queue and run the
/// same activity classes Temporal runs. A non-retryable failure is answered with StepRefused, and so is
/// a step stopped by a cancel (kind Cancelled); any other exception becomes MassTransit's fault, which
/// the engine retries. A migration's forward steps run under <see cref="RunningSteps"/>, so CancelSteps
/// stops them.</summary>
public sealed class SourceStepsConsumer(SourceActivities source, RunningSteps running)
    : IConsumer<MeasureGuest>, IConsumer<IntrospectGuest>, IConsumer<TransferPages>, IConsumer<HandOver>, IConsumer<ReleaseSource>
{
    public Task Consume(ConsumeContext<MeasureGuest> context) => Step.RespondAsync(context, _ => source.MeasureAsync(context.Message), running, context.Message.MigrationId);

    public Task Consume(ConsumeContext<IntrospectGuest> context) =>
        Step.RespondAsync(context, ct => source.IntrospectAsync(context.Message, ct), running, context.Message.MigrationId);

    public Task Consume(ConsumeContext<TransferPages> context) =>
        Step.RespondAsync(context, ct => source.TransferAsync(context.Message, ct), running, context.Message.MigrationId);

    public Task Consume(ConsumeContext<HandOver> context) => Step.RespondAsync(context, _ => source.HandOverAsync(context.Message), running, context.Message.MigrationId);

    public Task Consume(ConsumeContext<ReleaseSource> context) => Step.RespondAsync(context, _ => source.ReleaseSourceAsync(context.Message));
}

public sealed class PagingStepsConsumer(PagingActivities paging, RunningSteps running) : IConsumer<StartPaging>, IConsumer<ReleasePaging>
{
    public Task Consume(ConsumeContext<StartPaging> context) =>
        Step.RespondAsync(context, _ => paging.StartPagingAsync(context.Message), running, context.Message.MigrationId);

    public Task Consume(ConsumeContext<ReleasePaging> context) => Step.RespondAsync(context, _ => paging.ReleasePagingAsync(context.Message));
}

public sealed class MainHostStepsConsumer(MainHostActivities main, RunningSteps running) : IConsumer<SwitchOver>, IConsumer<StopVm>
{
    public Task Consume(ConsumeContext<SwitchOver> context) =>
        Step.RespondAsync(context, _ => main.SwitchOverAsync(context.Message), running, context.Message.MigrationId);

    public Task Consume(ConsumeContext<StopVm> context) => Step.RespondAsync(context, _ => main.StopVmAsync(context.Message));
}

/// <summary>The memory check (not a step of the procedure) at a source or a main host: a host with both
/// roles digests as the main host a VM that runs there, else as the source that sent it.</summary>
public sealed class DigestStepsConsumer(IServiceProvider services) : IConsumer<DigestMemory>
{
    public Task Consume(ConsumeContext<DigestMemory> context)
    {
        var main = services.GetService<MainHostActivities>();
        var runsHere = services.GetService<MainHostVms>()?.Find(context.Message.Vm) is not null;
        return runsHere || services.GetService<SourceActivities>() is not { } source
            ? Step.RespondAsync(context, _ => (main ?? throw new ApplicationFailureException("this host is no main host", nonRetryable: true)).DigestAsync(context.Message))
            : Step.RespondAsync(context, _ => source.DigestAsync(context.Message));
    }
}

/// <summary>The engine cancelled a migration: its forward steps running here stop.</summary>
public sealed class CancelStepsConsumer(RunningSteps running, HostContext host, ILogger<CancelStepsConsumer> logger) : IConsumer<CancelSteps>
{
    public Task Consume(ConsumeContext<CancelSteps> context)
    {
        var stopped = running.Cancel(context.Message.MigrationId);
        if (stopped > 0)
        {
            logger.LogWarning("migration {Migration}: {Reason}: stopping its {Steps} steps running on {Host}", context.Message.MigrationId,
                context.Message.Reason, stopped, host.Host);
        }
        return Task.CompletedTask;
    }
}

internal static class Step
{
    /// <summary>Runs the step and answers; with <paramref name="running"/>, as a forward step of
    /// <paramref name="migrationId"/> that a cancel stops.</summary>
    public static async Task RespondAsync<TIn, TOut>(ConsumeContext<TIn> context, Func<CancellationToken, Task<TOut>> step, RunningSteps? running = null,
        Guid migrationId = default)
        where TIn : class
        where TOut : class
    {
        using var scope = running?.Start(migrationId, context.CancellationToken);
        var ct = scope?.Token ?? context.CancellationToken;
        StepToken.Use(ct);
        TOut result;
        try
        {
            result = await step(ct);
        }
        catch (ApplicationFailureException e) when (e.NonRetryable)
        {
            await context.RespondAsync(new StepRefused(e.Message, e.ErrorType));
            return;
        }
        catch (OperationCanceledException) when (scope is not null && ct.IsCancellationRequested && !context.CancellationToken.IsCancellationRequested)
        {
            await context.RespondAsync(new StepRefused("stopped: the migration was cancelled", StepErrors.Cancelled));
            return;
        }
        await context.RespondAsync(result);
    }
}
