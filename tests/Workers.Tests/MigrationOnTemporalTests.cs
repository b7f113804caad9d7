using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;
using SEmigrate.Workers.Temporal;
using Temporalio.Api.Enums.V1;

namespace SEmigrate.Workers.Tests;

/// <summary>The migration workflow on a real Temporal server, with the host workers serving its
/// activities on their task queues. Runs only when a server is configured; otherwise it reports itself
/// skipped, with the reason, at run time.</summary>
public class MigrationOnTemporalTests(TemporalFixture temporal, RealGuestFixture guest, PostgresFixture postgres)
    : IClassFixture<TemporalFixture>, IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task The_split_migration_workflow_switches_over_on_a_real_server()
    {
        Assert.SkipWhen(temporal.Client is null, temporal.SkipReason);
        var ct = TestContext.Current.CancellationToken;
        var client = temporal.Client!;
        // `semigrate temporal setup`'s work, twice: the second time finds everything there.
        await SearchAttributeSetup.AddMissingAsync(client, ct);
        Assert.Empty(await SearchAttributeSetup.AddMissingAsync(client, ct));
        Assert.All(await SearchAttributeSetup.CheckAsync(client, ct), a => Assert.Equal(IndexedValueType.Keyword, a.Has));
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, temporalAddress: client.Connection.Options.TargetHost);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);

        var handle = await client.StartWorkflowAsync((MigrationWorkflow w) => w.RunAsync(request), MigrationWorkflow.StartOptions(request));
        // One migration of a VM at a time: a second one while the first runs is refused.
        var second = request with { MigrationId = Guid.NewGuid() };
        await Assert.ThrowsAsync<Temporalio.Exceptions.WorkflowAlreadyStartedException>(() =>
            client.StartWorkflowAsync((MigrationWorkflow w) => w.RunAsync(second), MigrationWorkflow.StartOptions(second)));
        var outcome = await handle.GetResultAsync();

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        Assert.Equal(MigrationState.SwitchedOver, (await handle.QueryAsync(w => w.Progress())).State);
        var described = await handle.DescribeAsync();
        Assert.Equal(nameof(MigrationState.SwitchedOver), described.TypedSearchAttributes.Get(MigrationWorkflow.StateKey));
        Assert.Equal(request.Vm.ToString(), described.TypedSearchAttributes.Get(MigrationWorkflow.VmKey));
        var verified = await MemoryCheck.CompareAsync(run.Steps, request, outcome.Placement!, ct);
        Assert.True(verified.Ok, $"{verified}");
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
    }
}
