using SEmigrate.TestSupport;

namespace SEmigrate.Workers.Tests;

public class MartenRoundTripTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>
{
    public sealed record ThingStarted(string Name);

    public sealed record ThingCounted(int Count);

    [Fact]
    public async Task Appended_events_read_back_in_order_with_their_data()
    {
        await using var store = postgres.CreateStore(o => o.Events.AddEventTypes([typeof(ThingStarted), typeof(ThingCounted)]));
        var stream = Guid.NewGuid();
        await using (var session = store.LightweightSession())
        {
            session.Events.StartStream(stream, new ThingStarted("vm-1"), new ThingCounted(3));
            await session.SaveChangesAsync(TestContext.Current.CancellationToken);
        }
        await using (var session = store.LightweightSession())
        {
            session.Events.Append(stream, new ThingCounted(4));
            await session.SaveChangesAsync(TestContext.Current.CancellationToken);
        }

        await using var query = store.QuerySession();
        var events = await query.Events.FetchStreamAsync(stream, token: TestContext.Current.CancellationToken);
        Assert.Equal([new ThingStarted("vm-1"), new ThingCounted(3), new ThingCounted(4)], events.Select(e => e.Data));
        Assert.Equal([1L, 2L, 3L], events.Select(e => e.Version));
    }

    [Fact]
    public async Task The_store_lives_in_the_fixture_schema()
    {
        // With an event type, so that the event store's tables are part of the configuration whichever
        // test of this class runs first.
        await using var store = postgres.CreateStore(o => o.Events.AddEventType<ThingStarted>());
        await store.Storage.ApplyAllConfiguredChangesToDatabaseAsync();
        Assert.Equal(postgres.Schema, store.Options.DatabaseSchemaName);
        await using var connection = new Npgsql.NpgsqlConnection(postgres.ConnectionString);
        await connection.OpenAsync(TestContext.Current.CancellationToken);
        await using var cmd = new Npgsql.NpgsqlCommand(
            "select count(*) from information_schema.tables where table_schema = @s and table_name = 'mt_events'", connection);
        cmd.Parameters.AddWithValue("s", postgres.Schema);
        Assert.Equal(1L, await cmd.ExecuteScalarAsync(TestContext.Current.CancellationToken));
    }
}
