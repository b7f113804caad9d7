using MassTransit;
using SEmigrate.Activities;
using SEmigrate.Contracts.Migration;
using Temporalio.Exceptions;

namespace SEmigrate.Workers.Steps;

/// <summary>The embedded engine's steps arrive as MassTransit requests on the host's queue and run the
/// same activity classes Temporal runs. A non-retryable failure is answered with StepRefused; any
/// other exception becomes MassTransit's fault, which the engine retries.</summary>
public sealed class SourceStepsConsumer(SourceActivities source)
    : IConsumer<MeasureGuest>, IConsumer<IntrospectGuest>, IConsumer<TransferPages>, IConsumer<HandOver>, IConsumer<ReleaseSource>, IConsumer<DigestMemory>
{
    public Task Consume(ConsumeContext<MeasureGuest> context) => Step.RespondAsync(context, () => source.MeasureAsync(context.Message));

    public Task Consume(ConsumeContext<IntrospectGuest> context) => Step.RespondAsync(context, () => source.IntrospectAsync(context.Message, context.CancellationToken));

    public Task Consume(ConsumeContext<TransferPages> context) => Step.RespondAsync(context, () => source.TransferAsync(context.Message, context.CancellationToken));

    public Task Consume(ConsumeContext<HandOver> context) => Step.RespondAsync(context, () => source.HandOverAsync(context.Message));

    public Task Consume(ConsumeContext<DigestMemory> context) => Step.RespondAsync(context, () => source.DigestAsync(context.Message));

    public Task Consume(ConsumeContext<ReleaseSource> context) => Step.RespondAsync(context, () => source.ReleaseSourceAsync(context.Message));
}

public sealed class PagingStepsConsumer(PagingActivities paging) : IConsumer<StartPaging>, IConsumer<ReleasePaging>
{
    public Task Consume(ConsumeContext<StartPaging> context) => Step.RespondAsync(context, () => paging.StartPagingAsync(context.Message));

    public Task Consume(ConsumeContext<ReleasePaging> context) => Step.RespondAsync(context, () => paging.ReleasePagingAsync(context.Message));
}

public sealed class MainHostStepsConsumer(MainHostActivities main) : IConsumer<SwitchOver>, IConsumer<DigestMemory>, IConsumer<StopVm>
{
    public Task Consume(ConsumeContext<SwitchOver> context) => Step.RespondAsync(context, () => main.SwitchOverAsync(context.Message));

    public Task Consume(ConsumeContext<DigestMemory> context) => Step.RespondAsync(context, () => main.DigestAsync(context.Message));

    public Task Consume(ConsumeContext<StopVm> context) => Step.RespondAsync(context, () => main.StopVmAsync(context.Message));
}

internal static class Step
{
    public static async Task RespondAsync<TIn, TOut>(ConsumeContext<TIn> context, Func<Task<TOut>> step)
        where TIn : class
        where TOut : class
    {
        TOut result;
        try
        {
            result = await step();
        }
        catch (ApplicationFailureException e) when (e.NonRetryable)
        {
            await context.RespondAsync(new StepRefused(e.Message, e.ErrorType));
            return;
        }
        await context.RespondAsync(result);
    }
}
