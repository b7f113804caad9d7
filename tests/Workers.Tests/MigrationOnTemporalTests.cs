using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Temporal;
using SEmigrate.Workflows;
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
        var request = await run.SignAsync(run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000), ct);

        var handle = await client.StartWorkflowAsync((MigrationWorkflow w) => w.RunAsync(request), MigrationWorkflow.StartOptions(request));
        // One migration of a VM at a time: a second one while the first runs is refused.
        var second = request with { MigrationId = Guid.NewGuid() };
        await Assert.ThrowsAsync<Temporalio.Exceptions.WorkflowAlreadyStartedException>(() =>
            client.StartWorkflowAsync((MigrationWorkflow w) => w.RunAsync(second), MigrationWorkflow.StartOptions(second)));
        var outcome = await handle.GetResultAsync();

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        var progress = await handle.QueryAsync(w => w.Progress());
        Assert.Equal(MigrationState.SwitchedOver, progress.State);
        // Each transfer signalled its progress (the switch-over, seconds long, came after their signals).
        Assert.Equal(outcome.Transfers.Select(t => t.Host).Order(StringComparer.Ordinal), progress.Live!.Select(p => p.Host));
        var described = await handle.DescribeAsync();
        Assert.Equal(nameof(MigrationState.SwitchedOver), described.TypedSearchAttributes.Get(MigrationWorkflow.StateKey));
        Assert.Equal(request.Vm.ToString(), described.TypedSearchAttributes.Get(MigrationWorkflow.VmKey));
        var verified = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct, request); // Temporal keeps no journal here
        Assert.True(verified.Ok, $"{verified}");
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
    }

    [Fact]
    public async Task A_cancel_from_the_UI_stops_the_transfers_and_undoes_at_every_destination_on_a_real_server()
    {
        Assert.SkipWhen(temporal.Client is null, temporal.SkipReason);
        var ct = TestContext.Current.CancellationToken;
        var client = temporal.Client!;
        await SearchAttributeSetup.AddMissingAsync(client, ct);
        // 4 MB/s: the transfers last long enough for the cancel to land in them.
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceMaxMBps: 4, temporalAddress: client.Connection.Options.TargetHost);
        var request = await run.SignAsync(run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000), ct);
        var handle = await client.StartWorkflowAsync((MigrationWorkflow w) => w.RunAsync(request), MigrationWorkflow.StartOptions(request));
        var until = DateTime.UtcNow.AddMinutes(2);
        while ((await handle.QueryAsync(w => w.Progress())).State != MigrationState.Transferring)
        {
            Assert.True(DateTime.UtcNow < until, "the transfers never started");
            await Task.Delay(200, ct);
        }

        await handle.CancelAsync(); // as the Web UI and `temporal workflow cancel` do
        var outcome = await handle.GetResultAsync();

        Assert.Equal(MigrationState.Compensated, outcome.State);
        Assert.StartsWith("cancelled", outcome.Reason, StringComparison.Ordinal);
        Assert.Equal(nameof(MigrationState.Compensated), (await handle.DescribeAsync()).TypedSearchAttributes.Get(MigrationWorkflow.StateKey));
        foreach (var host in new[] { run.Main, run.Sub1, run.Sub2 })
        {
            Assert.False(run.HoldsPagesOf(host, request.Vm), $"{host} still holds pages of the VM");
        }
    }

    [Fact]
    public async Task A_drain_workflow_and_a_schedule_that_starts_it_on_a_real_server()
    {
        Assert.SkipWhen(temporal.Client is null, temporal.SkipReason);
        var ct = TestContext.Current.CancellationToken;
        var client = temporal.Client!;
        await SearchAttributeSetup.AddMissingAsync(client, ct);
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, temporalAddress: client.Connection.Options.TargetHost);
        await run.FleetOnceAsync(run.AllReported, "every host reported", ct);

        var input = await run.OrderAsync(new DrainHost(Guid.NewGuid(), run.Source, MigrationMode.Semigrate, ["vaultdb"]), ct);
        var drain = await client.StartWorkflowAsync((DrainWorkflow w) => w.RunAsync(input),
            new Temporalio.Client.WorkflowOptions($"drain-{run.Source}", MigrationWorkflow.OrchestratorQueue));
        var report = await drain.GetResultAsync();
        Assert.Empty(report.NotMoved);
        var moved = Assert.Single(report.Moved);
        Assert.Equal(MigrationState.SwitchedOver, moved.State);
        await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(moved.MigrationId, moved.VmId, moved.To)), ct);

        // The same drain on a Temporal schedule: created, triggered (a DrainHost run starts), deleted.
        var id = $"drain-test-{Guid.NewGuid():N}"[..24];
        await TemporalDrainSchedules.CreateAsync(client, new DrainSchedule(id, run.Source, null, TimeSpan.FromHours(1), ScheduleOverlap.Skip, MigrationMode.Semigrate, ["vaultdb"], 1,
            Paused: false, NextRun: DateTimeOffset.UtcNow.AddHours(1)));
        var schedule = client.GetScheduleHandle(id);
        try
        {
            await schedule.TriggerAsync();
            var until = DateTime.UtcNow.AddMinutes(1);
            while ((await schedule.DescribeAsync()).Info.RecentActions.Count == 0)
            {
                Assert.True(DateTime.UtcNow < until, "the triggered schedule started no drain");
                await Task.Delay(500, ct);
            }
        }
        finally
        {
            await schedule.DeleteAsync();
        }
    }
}
