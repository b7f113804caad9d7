using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workflows.Tests;

/// <summary>The hand-over runs beside the transfers (it is inside a running guest's downtime): it starts
/// before they end, the switch-over waits for both, and an undo waits for the hand-over to end before
/// any destination releases (nothing may still be storing at the main host while it releases).</summary>
public class HandOverBesideTransfersTests
{
    private static readonly MigrationRequest Request = new(Guid.NewGuid(), Guid.NewGuid(), "g1", "src", new Destination("main", 512),
        [new Destination("sub-a", 512), new Destination("sub-b", 512)], MigrationMode.Semigrate, []);

    [Fact]
    public async Task The_hand_over_starts_while_every_transfer_is_still_running()
    {
        var steps = new OrderedSteps(failTransferTo: null);

        var outcome = await new MigrationProcedure(steps).RunAsync(Request, TestContext.Current.CancellationToken);

        Assert.True(outcome.State == MigrationState.SwitchedOver, outcome.Reason);
        // The transfers finish only once the hand-over has started: it cannot have waited for them.
        Assert.Equal(["hand-over started", "transfer done", "transfer done", "transfer done", "hand-over done", "switch-over"],
            steps.Log.Where(l => !l.StartsWith("release", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task A_failed_transfer_is_undone_only_after_the_hand_over_ended()
    {
        var steps = new OrderedSteps(failTransferTo: "sub-a");

        var outcome = await new MigrationProcedure(steps).RunAsync(Request, TestContext.Current.CancellationToken);

        Assert.Equal(MigrationState.Compensated, outcome.State);
        Assert.Contains("sub-a is full", outcome.Reason, StringComparison.Ordinal);
        var log = steps.Log.ToList();
        Assert.True(log.IndexOf("hand-over done") < log.IndexOf("release main"), string.Join(", ", log));
        Assert.DoesNotContain("switch-over", log);
    }

    /// <summary>Transfers wait until the hand-over has started; the hand-over ends a moment after the
    /// transfers did (or one of them failed).</summary>
    private sealed class OrderedSteps(string? failTransferTo) : IMigrationSteps
    {
        private readonly TaskCompletionSource handOverStarted = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource transfersOver = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int transfers;

        public List<string> Log { get; } = [];

        private void Say(string what)
        {
            lock (Log)
            {
                Log.Add(what);
            }
        }

        public DateTimeOffset UtcNow => DateTimeOffset.UtcNow;

        public async Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => await Task.WhenAll(steps);

        public bool Patched(string patchId) => true;

        public Task<GuestLayout> MeasureAsync(string host, MeasureGuest input, CancellationToken ct) =>
            Task.FromResult(new GuestLayout(1536, 512, [512, 512, 512], 0));

        public Task<IntrospectionResult> IntrospectAsync(string host, IntrospectGuest input, CancellationToken ct) =>
            Task.FromResult(new IntrospectionResult(new PageCounts(0, 0, 1536), 1536, 1, 1, [], 512, [512, 512, 512], [512, 512, 512]));

        public Task<PagingStarted> StartPagingAsync(string host, StartPaging input, CancellationToken ct) =>
            Task.FromResult(new PagingStarted(host, [1], host == "main" ? [2] : null));

        public async Task<TransferResult> TransferAsync(string host, TransferPages input, CancellationToken ct)
        {
            await handOverStarted.Task;
            await Task.Yield();
            try
            {
                if (input.Assignment.Host == failTransferTo)
                {
                    throw new InvalidOperationException($"{failTransferTo} is full");
                }
                Say("transfer done");
                return new TransferResult(input.Assignment.Host, input.Assignment.Pages, 1, 0, 0, 1);
            }
            finally
            {
                if (Interlocked.Increment(ref transfers) == 3 || input.Assignment.Host == failTransferTo)
                {
                    transfersOver.TrySetResult();
                }
            }
        }

        public async Task<HandedOver> HandOverAsync(string host, HandOver input, CancellationToken ct)
        {
            Say("hand-over started");
            handOverStarted.SetResult();
            await transfersOver.Task;
            await Task.Delay(100, ct); // still sending the blobs when the transfers are over
            Say("hand-over done");
            return new HandedOver([9], 1);
        }

        public Task<SwitchedOverResult> SwitchOverAsync(string host, SwitchOver input, CancellationToken ct)
        {
            Say("switch-over");
            return Task.FromResult(new SwitchedOverResult(host, 512, 1024));
        }

        public Task<PagingReleased> ReleasePagingAsync(string host, ReleasePaging input, CancellationToken ct)
        {
            Say($"release {host}");
            return Task.FromResult(new PagingReleased(host, 0));
        }

        public Task<SourceReleased> ReleaseSourceAsync(string host, ReleaseSource input, CancellationToken ct)
        {
            Say("release source");
            return Task.FromResult(new SourceReleased(input.VmLeft));
        }

        public Task RecordAsync(IMigrationEvent e) => Task.CompletedTask;
    }
}
