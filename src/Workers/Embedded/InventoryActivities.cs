using SEmigrate.Contracts.Migration;
using SEmigrate.Workflows;
using Temporalio.Activities;
using Temporalio.Exceptions;

namespace SEmigrate.Workers.Embedded;

/// <summary>The Temporal drain workflow's look at the fleet inventory (Marten), on the orchestrator's worker.</summary>
public sealed class InventoryActivities(DrainRunner drains)
{
    [Activity(DrainWorkflow.InventoryActivity)]
    public async Task<DrainInventory> ReadAsync(ReadInventory input)
    {
        try
        {
            return await drains.InventoryAsync(input.Host, ActivityExecutionContext.Current.CancellationToken);
        }
        catch (InvalidOperationException e)
        {
            throw new ApplicationFailureException(e.Message, nonRetryable: true); // an unknown host stays unknown
        }
    }
}
