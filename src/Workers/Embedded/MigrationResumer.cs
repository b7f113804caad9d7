using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace SEmigrate.Workers.Embedded;

/// <summary>In the orchestrator's worker (`worker --role orchestrator`): at start, and every few seconds
/// after, resumes every migration of the embedded engine that no orchestrator drives (its `migrate`
/// process or another orchestrator died), so that none is left half-done.</summary>
public sealed class MigrationResumer(EmbeddedEngine engine, ILogger<MigrationResumer> logger) : BackgroundService
{
    public static readonly TimeSpan Every = TimeSpan.FromSeconds(5);

    private readonly HashSet<Guid> driving = [];

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                foreach (var id in await engine.UnfinishedAsync(stoppingToken))
                {
                    lock (driving)
                    {
                        if (!driving.Add(id))
                        {
                            continue;
                        }
                    }
                    _ = ResumeAsync(id, stoppingToken);
                }
            }
#pragma warning disable CA1031 // the database may be away for a while: look again later
            catch (Exception e) when (e is not OperationCanceledException)
#pragma warning restore CA1031
            {
                logger.LogWarning("looking for unfinished migrations: {Problem}", e.Message);
            }
            await Task.Delay(Every, stoppingToken);
        }
    }

    private async Task ResumeAsync(Guid id, CancellationToken ct)
    {
        try
        {
            if (await engine.ResumeAsync(id, ct) is { } outcome)
            {
                logger.LogWarning("resumed migration {Migration}: {State}{Reason}", id, outcome.State, outcome.Reason is null ? "" : $" ({outcome.Reason})");
            }
        }
#pragma warning disable CA1031 // one migration that cannot be resumed now must not stop the others
        catch (Exception e) when (e is not OperationCanceledException)
#pragma warning restore CA1031
        {
            logger.LogError("resuming migration {Migration}: {Problem}", id, e.Message);
        }
        finally
        {
            lock (driving)
            {
                driving.Remove(id);
            }
        }
    }
}
