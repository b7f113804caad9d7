using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workflows.Tests;

/// <summary>The procedure as the embedded engine runs it: steps complete on thread-pool threads, many
/// transfers at the same moment, while the progress query reads them.</summary>
public class ConcurrentTransferTests
{
    private const int SubHosts = 400;

    [Fact]
    public async Task Transfers_finishing_at_once_on_many_threads_are_all_counted()
    {
        for (var round = 0; round < 40; round++)
        {
            var steps = new ThreadPoolSteps();
            var procedure = new MigrationProcedure(steps);
            var request = new MigrationRequest(Guid.NewGuid(), Guid.NewGuid(), "g1", "src", new Destination("main", 512),
                [.. Enumerable.Range(0, SubHosts).Select(i => new Destination($"sub-{i}", 512))], MigrationMode.Semigrate, []);
            using var reading = new CancellationTokenSource();
            var reader = Task.Run(() =>
            {
                while (!reading.IsCancellationRequested)
                {
                    _ = procedure.Progress.Transfers.Count;
                }
            }, TestContext.Current.CancellationToken);

            var outcome = await procedure.RunAsync(request, TestContext.Current.CancellationToken);
            await reading.CancelAsync();
            await reader;

            Assert.True(outcome.State == MigrationState.SwitchedOver, outcome.Reason);
            Assert.Equal(SubHosts + 1, outcome.Transfers.Count);
            Assert.Equal(SubHosts + 1, outcome.Transfers.Select(t => t.Host).Distinct().Count());
        }
    }

    /// <summary>Every step answers on a thread-pool thread; the transfers all wait for one another and
    /// are released together.</summary>
    private sealed class ThreadPoolSteps : IMigrationSteps
    {
        private readonly TaskCompletionSource go = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int transfers;

        public DateTimeOffset UtcNow => DateTimeOffset.UtcNow;

        public async Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => await Task.WhenAll(steps);

        public bool Patched(string patchId) => true;

        public Task<GuestLayout> MeasureAsync(string host, MeasureGuest input, CancellationToken ct) =>
            Task.Run(() => new GuestLayout((SubHosts + 1) * 512, 512, [.. Enumerable.Repeat(512, SubHosts + 1)], 0), ct);

        public Task<IntrospectionResult> IntrospectAsync(string host, IntrospectGuest input, CancellationToken ct) =>
            Task.Run(() => new IntrospectionResult(new PageCounts(0, 0, (SubHosts + 1) * 512), (SubHosts + 1) * 512, 1, 1, [], 512, [.. Enumerable.Repeat(512, SubHosts + 1)], [.. Enumerable.Repeat(512, SubHosts + 1)]), ct);

        public Task<PagingStarted> StartPagingAsync(string host, StartPaging input, CancellationToken ct) =>
            Task.Run(() => new PagingStarted(host, [1], host == "main" ? [2] : null), ct);

        public async Task<TransferResult> TransferAsync(string host, TransferPages input, CancellationToken ct)
        {
            if (Interlocked.Increment(ref transfers) == SubHosts + 1)
            {
                go.SetResult();
            }
            await go.Task;
            return await Task.Run(() => new TransferResult(input.Assignment.Host, input.Assignment.Pages, 1, 0, 0, 1), ct);
        }

        public Task<HandedOver> HandOverAsync(string host, HandOver input, CancellationToken ct) => Task.Run(() => new HandedOver([9], 1), ct);

        public Task<SwitchedOverResult> SwitchOverAsync(string host, SwitchOver input, CancellationToken ct) => Task.Run(() => new SwitchedOverResult(host, 512, 512), ct);

        public Task<PagingReleased> ReleasePagingAsync(string host, ReleasePaging input, CancellationToken ct) => Task.Run(() => new PagingReleased(host, 0), ct);

        public Task<SourceReleased> ReleaseSourceAsync(string host, ReleaseSource input, CancellationToken ct) => Task.Run(() => new SourceReleased(input.VmLeft), ct);

        public Task RecordAsync(IMigrationEvent e) => Task.Run(() => { });
    }
}
