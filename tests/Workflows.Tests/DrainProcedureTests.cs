using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workflows.Tests;

/// <summary>The drain's plan and its report, with steps that stand in for the inventory and the migrations.</summary>
public class DrainProcedureTests
{
    private sealed class Steps(DrainInventory inventory, Func<MigrationRequest, MigrationState> ends, Func<MigrationRequest, string?>? unreachable = null) : IDrainSteps
    {
        private int running;

        public List<MigrationRequest> Migrated { get; } = [];

        public int MostAtOnce { get; private set; }

        public Task<DrainInventory> InventoryAsync(string host, CancellationToken ct) => Task.FromResult(inventory);

        public async Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => await Task.WhenAll(steps);

        public async Task<MigrationOutcome> MigrateAsync(MigrationRequest request, CancellationToken ct)
        {
            lock (Migrated)
            {
                Migrated.Add(request);
                MostAtOnce = Math.Max(MostAtOnce, ++running);
            }
            await Task.Delay(20, ct);
            lock (Migrated)
            {
                running--;
            }
            if (unreachable?.Invoke(request) is { } dead)
            {
                return new MigrationOutcome(request.MigrationId, MigrationState.Compensated, $"start paging: no worker for host {dead} is running", null, [], null, null,
                    Unreachable: dead);
            }
            var state = ends(request);
            return new MigrationOutcome(request.MigrationId, state, state == MigrationState.SwitchedOver ? null : "a sub-host refused pages", null, [], null, null);
        }
    }

    private static readonly DrainTarget[] Others =
        [new("main-1", CanBeMain: true, CanHoldPages: true, FreePages: 100_000), new("sub-1", false, true, 40_000), new("sub-2", false, true, 30_000)];

    private static DrainHost Drain(int atOnce = 2) => new(Guid.NewGuid(), "h1", MigrationMode.Semigrate, ["vaultdb"], atOnce);

    [Fact]
    public async Task A_guest_that_cannot_move_at_all_is_reported_with_its_reason_and_takes_no_room()
    {
        var why = "host h1 does not run the source role";
        var steps = new Steps(new DrainInventory([new("taken-over", 90_000, true, why), new("b", 90_000, true)], Others), _ => MigrationState.SwitchedOver);

        var report = await new DrainProcedure(steps).RunAsync(Drain(), TestContext.Current.CancellationToken);

        Assert.Equal(new DrainNotMoved("taken-over", why), Assert.Single(report.NotMoved));
        Assert.Equal("b", Assert.Single(steps.Migrated).Guest); // the room it would have taken went to the next
        Assert.Equal("main-1", Assert.Single(report.Moved).To);
    }

    [Fact]
    public async Task Every_guest_is_placed_on_the_other_hosts_room_reserved_as_it_goes_and_reported_moved()
    {
        var steps = new Steps(new DrainInventory([new("a", 65_600, true), new("b", 65_600, false)], [new("h1", true, true, 1_000_000), .. Others]),
            _ => MigrationState.SwitchedOver);

        var report = await new DrainProcedure(steps).RunAsync(Drain(), TestContext.Current.CancellationToken);

        Assert.Equal("h1", report.Drained);
        Assert.Empty(report.NotMoved);
        Assert.Equal(["a", "b"], report.Moved.Select(m => m.Vm).Order());
        Assert.All(steps.Migrated, r => Assert.Equal(("h1", MigrationMode.Semigrate), (r.Source, r.Mode)));
        Assert.All(steps.Migrated, r => Assert.DoesNotContain(r.SubHosts, s => s.Host == "h1")); // never back to the drained host
        // The first takes the main host's room; the second gets what is left there and the sub-hosts' room.
        var first = steps.Migrated.Single(r => r.Guest == "a");
        var second = steps.Migrated.Single(r => r.Guest == "b");
        Assert.Equal(new Destination("main-1", 65_600), first.Main);
        Assert.Empty(first.SubHosts);
        // The second gets what the first left at the main host (less the room each hand-over keeps
        // there), the rest on the sub-hosts.
        Assert.Equal(new Destination("main-1", 100_000 - 65_600 - 2 * DrainProcedure.HandOverPages), second.Main);
        Assert.True(second.Main.CapacityPages + second.SubHosts.Sum(s => s.CapacityPages) >= 65_600, $"{second.Main} + {string.Join(", ", second.SubHosts)}");
    }

    [Fact]
    public async Task A_guest_there_is_no_room_for_and_one_whose_migration_was_undone_are_reported_with_why()
    {
        var steps = new Steps(new DrainInventory([new("big", 300_000, true), new("a", 60_000, true), new("b", 50_000, false)], Others),
            r => r.Guest == "b" ? MigrationState.Compensated : MigrationState.SwitchedOver);

        var report = await new DrainProcedure(steps).RunAsync(Drain(), TestContext.Current.CancellationToken);

        Assert.Equal(["a"], report.Moved.Select(m => m.Vm));
        Assert.Equal(2, report.NotMoved.Count);
        Assert.StartsWith("no room: it has 300000 pages, the other hosts have 170000 free", report.NotMoved.Single(n => n.Vm == "big").Reason, StringComparison.Ordinal);
        Assert.Equal("Compensated: a sub-host refused pages", report.NotMoved.Single(n => n.Vm == "b").Reason);
        Assert.DoesNotContain(steps.Migrated, r => r.Guest == "big");
    }

    [Fact]
    public async Task No_more_migrations_run_at_once_than_asked_and_without_a_main_host_nothing_moves()
    {
        var many = new Steps(new DrainInventory([.. Enumerable.Range(0, 5).Select(i => new DrainGuest($"g{i}", 1_000, true))], Others), _ => MigrationState.SwitchedOver);
        var report = await new DrainProcedure(many).RunAsync(Drain(atOnce: 2), TestContext.Current.CancellationToken);
        Assert.Equal(5, report.Moved.Count);
        Assert.Equal(2, many.MostAtOnce);

        var noMain = new Steps(new DrainInventory([new("a", 1_000, true)], [new("sub-1", false, true, 40_000)]), _ => MigrationState.SwitchedOver);
        var none = await new DrainProcedure(noMain).RunAsync(Drain(), TestContext.Current.CancellationToken);
        Assert.Empty(none.Moved);
        Assert.EndsWith("and none can be its main host", Assert.Single(none.NotMoved).Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_guest_placed_on_a_host_with_no_worker_is_placed_again_without_it_and_its_room_given_back()
    {
        // sub-x stopped after the inventory was read: a migration with a step there comes back undone.
        DrainTarget[] hosts = [new("sub-x", false, true, 80_000), .. Others];
        var steps = new Steps(new DrainInventory([new("a", 150_000, true)], hosts), _ => MigrationState.SwitchedOver,
            r => r.SubHosts.Any(s => s.Host == "sub-x") ? "sub-x" : null);

        var report = await new DrainProcedure(steps).RunAsync(Drain(), TestContext.Current.CancellationToken);

        Assert.Empty(report.NotMoved);
        Assert.Equal(("a", "main-1"), (Assert.Single(report.Moved).Vm, report.Moved[0].To));
        // Tried with sub-x first, then again as another migration of the same VM, without it.
        var (first, second) = (steps.Migrated[0], steps.Migrated[1]);
        Assert.Equal(2, steps.Migrated.Count);
        Assert.Contains(first.SubHosts, s => s.Host == "sub-x");
        Assert.DoesNotContain(second.SubHosts, s => s.Host == "sub-x");
        Assert.Equal(first.Vm, second.Vm);
        Assert.NotEqual(first.MigrationId, second.MigrationId);
        Assert.Equal(report.Moved[0].MigrationId, second.MigrationId);
        // The room the first try held at main-1 was given back: the second gets the same share there.
        Assert.Equal(new Destination("main-1", 100_000 - DrainProcedure.HandOverPages), second.Main);
        Assert.Equal(first.Main, second.Main);
        Assert.True(second.Main.CapacityPages + second.SubHosts.Sum(s => s.CapacityPages) >= 150_000, string.Join(", ", second.SubHosts));
    }

    [Fact]
    public async Task A_guest_is_tried_at_no_more_places_than_allowed_and_a_failure_for_another_reason_is_not_tried_again()
    {
        var hosts = Enumerable.Range(1, 5).Select(i => new DrainTarget($"m{i}", true, true, 100_000 + i)).ToArray();
        var dead = new Steps(new DrainInventory([new("a", 1_000, true)], hosts), _ => MigrationState.SwitchedOver, r => r.Main.Host);
        var report = await new DrainProcedure(dead).RunAsync(Drain(), TestContext.Current.CancellationToken);
        Assert.Equal(DrainProcedure.MaxPlacements, dead.Migrated.Count);
        Assert.StartsWith("Compensated: start paging: no worker for host m3", Assert.Single(report.NotMoved).Reason, StringComparison.Ordinal);

        var refused = new Steps(new DrainInventory([new("a", 1_000, true)], hosts), _ => MigrationState.Compensated);
        report = await new DrainProcedure(refused).RunAsync(Drain(), TestContext.Current.CancellationToken);
        Assert.Single(refused.Migrated);
        Assert.Equal("Compensated: a sub-host refused pages", Assert.Single(report.NotMoved).Reason);
    }
}
